//! A JSON object's settings as one typed input each: numbers, whole
//! numbers, true/false and text, with their help and default. The form's
//! method hyper-parameters and subset use it.

use leptos::prelude::*;
use serde_json::{Map, Value};

/// The text an input shows for `v`.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What `text` stands for, read as the kind of value `like` is.
pub fn value_of(text: &str, like: &Value) -> Result<Value, String> {
    let t = text.trim();
    match like {
        Value::Number(n) if n.is_u64() || n.is_i64() => t
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("`{t}` is not a whole number")),
        Value::Number(_) => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("`{t}` is not a number")),
        Value::Bool(_) => match t {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("true or false".into()),
        },
        Value::String(_) => Ok(Value::String(t.to_string())),
        Value::Null if t.is_empty() => Ok(Value::Null),
        Value::Null => Ok(t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(t.to_string()))),
        _ => serde_json::from_str(t).map_err(|e| e.to_string()),
    }
}

/// One input per key of `current` (keys in `skip` left out), ids
/// `f-{prefix}-{key}`. `apply` stores a changed value and says why it
/// cannot be stored.
#[component]
pub fn ObjectFields(
    prefix: &'static str,
    current: Map<String, Value>,
    /// The same object's defaults, shown beside the help.
    #[prop(optional)]
    defaults: Option<Map<String, Value>>,
    #[prop(optional)] skip: &'static [&'static str],
    help: Callback<String, Option<&'static str>>,
    apply: Callback<(String, Value), Result<(), String>>,
) -> impl IntoView {
    current
        .into_iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(key, like)| {
            let (error, set_error) = signal(None::<String>);
            let id = format!("f-{prefix}-{key}");
            let default = defaults
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|d| format!(" · default {}", text_of(d)))
                .unwrap_or_default();
            let help_text = format!("{}{default}", help.run(key.clone()).unwrap_or(""));
            let like = StoredValue::new(like);
            let name = key.clone();
            let on_text = move |text: String| {
                let result = like.with_value(|l| value_of(&text, l)).and_then(|v| apply.run((name.clone(), v)));
                set_error.set(result.err());
            };
            let input = if like.with_value(Value::is_boolean) {
                let on = like.with_value(|l| l.as_bool() == Some(true));
                view! {
                    <select id=id.clone() name=id.clone() on:change=move |ev| on_text(event_target_value(&ev))>
                        <option value="true" selected=on>"true"</option>
                        <option value="false" selected=!on>"false"</option>
                    </select>
                }
                .into_any()
            } else {
                let initial = like.with_value(text_of);
                view! {
                    <input id=id.clone() name=id.clone() value=initial
                        on:input=move |ev| on_text(event_target_value(&ev))/>
                }
                .into_any()
            };
            view! {
                <label class="field" class:invalid=move || error.with(|e| e.is_some())>
                    <span class="name">{key.clone()}</span>
                    {input}
                    <span class="help">{move || error.get().unwrap_or_else(|| help_text.clone())}</span>
                </label>
            }
        })
        .collect_view()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_reads_as_the_kind_of_value_it_replaces() {
        assert_eq!(value_of("0.2", &json!(0.5)).unwrap(), json!(0.2));
        assert_eq!(value_of(" 3 ", &json!(4096)).unwrap(), json!(3));
        assert!(value_of("3.5", &json!(4096)).unwrap_err().contains("whole"));
        assert!(value_of("x", &json!(0.5)).unwrap_err().contains("`x`"));
        assert_eq!(value_of("false", &json!(true)).unwrap(), json!(false));
        assert_eq!(value_of("single", &json!("all")).unwrap(), json!("single"));
        assert_eq!(value_of("", &Value::Null).unwrap(), Value::Null);
        assert_eq!(text_of(&json!("512-128")), "512-128");
        assert_eq!(text_of(&json!(0.25)), "0.25");
    }
}

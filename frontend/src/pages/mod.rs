pub mod account;
pub mod api_reference;
pub mod audits;
pub mod cka;
pub mod compare;
pub mod datasets;
pub mod new_run;
pub mod new_sweep;
pub mod projects;
pub mod run;
pub mod runs;
pub mod studies;
pub mod sweeps;
pub mod workers;

use sslab_shared::api::RunStatus;

/// When a time was, as the browser's local time.
pub fn time_text(ms: i64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms as f64));
    d.to_locale_string("en-GB", &wasm_bindgen::JsValue::UNDEFINED)
        .into()
}

pub fn status_class(s: RunStatus) -> String {
    format!("status status-{}", s.as_str())
}

/// Calls `f` every two seconds while the component lives.
pub fn every_two_seconds(f: impl Fn() + 'static) {
    let handle =
        leptos::prelude::set_interval_with_handle(f, std::time::Duration::from_secs(2)).ok();
    leptos::prelude::on_cleanup(move || {
        if let Some(h) = handle {
            h.clear();
        }
    });
}

pub fn opt_num(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

//! Signing in and out, the team switcher, tokens and members.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::hooks::use_query_map;
use sslab_shared::auth::{
    AddMember, AddedMember, CreatedToken, Me, Member, NewToken, Role, Scope, SignIn, SwitchTeam,
    TokenInfo,
};

use super::time_text;
use crate::api;

/// Where to go after signing in: the page that sent the visitor here, if it
/// is one of ours.
fn next_page(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/".into())
}

fn go(href: &str) {
    if let Some(w) = web_sys::window() {
        let _ = w.location().set_href(href);
    }
}

#[component]
pub fn SignInPage() -> impl IntoView {
    let query = use_query_map();
    let (name, set_name) = signal(String::new());
    let (password, set_password) = signal(String::new());
    let (error, set_error) = signal(None::<String>);
    let (busy, set_busy) = signal(false);
    let code = move || query.with(|q| q.get("code")).unwrap_or_default();
    let send = move |req: SignIn| {
        set_busy.set(true);
        spawn_local(async move {
            let result = api::post::<Me>("/sign-in", Some(&req)).await;
            set_busy.set(false);
            match result {
                Ok(_) => go(&next_page(query.with_untracked(|q| q.get("next")))),
                Err(e) => set_error.set(Some(e.message)),
            }
        });
    };
    view! {
        <div class="signin">
            <h1>"Sign in to sslab"</h1>
            {move || (!code().is_empty()).then(|| view! {
                <p>"This is a one-time sign-in link."</p>
                <button id="signin-link" disabled=busy on:click=move |_| send(SignIn {
                    name: String::new(), password: String::new(), code: code(),
                })>"Sign in with this link"</button>
            })}
            <form id="signin-form" on:submit=move |ev| {
                ev.prevent_default();
                send(SignIn { name: name.get_untracked(), password: password.get_untracked(), code: String::new() });
            }>
                <label>"Name "<input id="signin-name" autocomplete="username" prop:value=name
                    on:input=move |ev| set_name.set(event_target_value(&ev))/></label>
                <label>"Password "<input id="signin-password" type="password" autocomplete="current-password"
                    prop:value=password on:input=move |ev| set_password.set(event_target_value(&ev))/></label>
                <button id="signin-submit" type="submit" disabled=busy>"Sign in"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" id="signin-error">{e}</p> })}
        </div>
    }
}

/// The header's part: who is signed in, the team switcher, sign out.
#[component]
pub fn AccountBar(me: Me) -> impl IntoView {
    let teams = me.teams.clone();
    let current = me.team.id.clone();
    let switch = move |team: String| {
        spawn_local(async move {
            if api::post::<Me>("/session/team", Some(&SwitchTeam { team }))
                .await
                .is_ok()
            {
                go("/");
            }
        });
    };
    let sign_out = move |_| {
        spawn_local(async move {
            let _ = api::post_empty("/sign-out").await;
            go("/signin");
        });
    };
    view! {
        <span class="account">
            <span id="signed-in-as">{me.name.clone()}</span>
            {(teams.len() > 1).then(|| view! {
                <select id="team-switcher" on:change=move |ev| switch(event_target_value(&ev))>
                    {teams.iter().map(|t| view! {
                        <option value=t.id.clone() selected=t.id == current>{t.name.clone()}</option>
                    }).collect_view()}
                </select>
            })}
            {(teams.len() <= 1).then(|| view! { <span id="team-name">{me.team.name.clone()}</span> })}
            <a href="/tokens">"Tokens"</a>
            {(me.team.role == Role::Admin).then(|| view! { <a href="/members">"Members"</a> })}
            <button id="sign-out" on:click=sign_out>"Sign out"</button>
        </span>
    }
}

/// Sets the signed-in user's password.
#[component]
fn PasswordForm() -> impl IntoView {
    let (password, set_password) = signal(String::new());
    let (status, set_status) = signal(None::<Result<String, String>>);
    let save = move || {
        let req = sslab_shared::auth::SetPassword {
            password: password.get_untracked(),
        };
        spawn_local(async move {
            set_status.set(Some(
                match api::post_json_empty("/session/password", &req).await {
                    Ok(()) => Ok("password set".into()),
                    Err(e) => Err(e.message),
                },
            ));
        });
    };
    view! {
        <form id="password-form" on:submit=move |ev| { ev.prevent_default(); save(); }>
            <label>"New password "<input id="new-password" type="password" autocomplete="new-password"
                prop:value=password on:input=move |ev| set_password.set(event_target_value(&ev))/></label>
            <button type="submit">"Set password"</button>
            {move || status.get().map(|s| match s {
                Ok(m) => view! { <span id="password-status">{m}</span> }.into_any(),
                Err(e) => view! { <span class="error" id="password-status">{e}</span> }.into_any(),
            })}
        </form>
    }
}

#[component]
pub fn TokensPage() -> impl IntoView {
    let (version, set_version) = signal(0u32);
    let tokens = LocalResource::new(move || {
        version.track();
        api::get::<Vec<TokenInfo>>("/tokens")
    });
    let (name, set_name) = signal(String::new());
    let (scope, set_scope) = signal("write".to_string());
    let (service, set_service) = signal(false);
    let (days, set_days) = signal(String::new());
    let (created, set_created) = signal(None::<Result<CreatedToken, String>>);
    let create = move || {
        let req = NewToken {
            name: name.get_untracked(),
            scope: Scope::parse(&scope.get_untracked()).unwrap_or_default(),
            service: service.get_untracked(),
            expires_in_days: days.get_untracked().trim().parse().ok(),
        };
        spawn_local(async move {
            let result = api::post::<CreatedToken>("/tokens", Some(&req)).await;
            set_created.set(Some(result.map_err(|e| e.message)));
            set_version.update(|v| *v += 1);
        });
    };
    let revoke = move |id: String| {
        spawn_local(async move {
            let _ = api::post::<TokenInfo>(&format!("/tokens/{id}/revoke"), None::<&()>).await;
            set_version.update(|v| *v += 1);
        });
    };
    view! {
        <div class="bar"><h1>"Tokens"</h1></div>
        <PasswordForm/>
        <p>"A token lets a script use the API as you: send "<code>"Authorization: Bearer sslab_…"</code>"."</p>
        <form id="token-form" on:submit=move |ev| { ev.prevent_default(); create(); }>
            <label>"Name "<input id="token-name" prop:value=name
                on:input=move |ev| set_name.set(event_target_value(&ev))/></label>
            <label>"Scope "<select id="token-scope" on:change=move |ev| set_scope.set(event_target_value(&ev))>
                <option value="write" selected>"write"</option>
                <option value="read">"read"</option>
                <option value="worker">"worker (admins)"</option>
            </select></label>
            <label>"Expires in days "<input id="token-days" size="4" placeholder="never" prop:value=days
                on:input=move |ev| set_days.set(event_target_value(&ev))/></label>
            <label><input id="token-service" type="checkbox" prop:checked=service
                on:change=move |ev| set_service.set(event_target_checked(&ev))/>" the team's service token (admins)"</label>
            <button type="submit">"Create token"</button>
        </form>
        {move || created.get().map(|r| match r {
            Ok(t) => view! {
                <p class="secret">"Copy it now; it is not shown again: "<code id="token-secret">{t.secret}</code></p>
            }.into_any(),
            Err(e) => view! { <p class="error">{e}</p> }.into_any(),
        })}
        <Transition fallback=|| view! { <p>"Loading tokens…"</p> }>
            {move || tokens.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) => view! {
                    <table id="tokens-table">
                        <thead><tr><th>"Name"</th><th>"Scope"</th><th>"Owner"</th><th>"Created"</th>
                            <th>"Expires"</th><th>"Last used"</th><th>"State"</th><th></th></tr></thead>
                        <tbody>{list.into_iter().map(|t| {
                            let id = t.id.clone();
                            let active = t.revoked_at.is_none();
                            view! {
                                <tr id=format!("token-{}", t.id)>
                                    <td>{t.name.clone()}</td>
                                    <td>{t.scope.as_str()}</td>
                                    <td>{t.user.clone().unwrap_or_else(|| "service".into())}</td>
                                    <td>{time_text(t.created_at)}</td>
                                    <td>{t.expires_at.map(time_text).unwrap_or_else(|| "never".into())}</td>
                                    <td>{t.last_used_at.map(time_text).unwrap_or_else(|| "never".into())}</td>
                                    <td>{if active { "active" } else { "revoked" }}</td>
                                    <td>{active.then(|| view! {
                                        <button class="revoke" on:click=move |_| revoke(id.clone())>"Revoke"</button>
                                    })}</td>
                                </tr>
                            }
                        }).collect_view()}</tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}

#[component]
pub fn MembersPage() -> impl IntoView {
    let (version, set_version) = signal(0u32);
    let members = LocalResource::new(move || {
        version.track();
        api::get::<Vec<Member>>("/members")
    });
    let (name, set_name) = signal(String::new());
    let (role, set_role) = signal("member".to_string());
    let (status, set_status) = signal(None::<Result<String, String>>);
    let add = move || {
        let req = AddMember {
            name: name.get_untracked(),
            role: Role::parse(&role.get_untracked()).unwrap_or(Role::Viewer),
        };
        spawn_local(async move {
            let result = api::post::<AddedMember>("/members", Some(&req)).await;
            set_status.set(Some(match result {
                Ok(AddedMember {
                    member,
                    sign_in_link: Some(link),
                }) => {
                    let origin = web_sys::window()
                        .and_then(|w| w.location().origin().ok())
                        .unwrap_or_default();
                    Ok(format!(
                        "added {}; send them this one-time sign-in link: {origin}{link}",
                        member.name
                    ))
                }
                Ok(AddedMember { member, .. }) => {
                    Ok(format!("{} is now {}", member.name, member.role.as_str()))
                }
                Err(e) => Err(e.message),
            }));
            set_version.update(|v| *v += 1);
        });
    };
    let remove = move |user_id: String| {
        spawn_local(async move {
            if let Err(e) = api::delete(&format!("/members/{user_id}")).await {
                set_status.set(Some(Err(e.message)));
            }
            set_version.update(|v| *v += 1);
        });
    };
    view! {
        <div class="bar"><h1>"Members"</h1></div>
        <form id="member-form" on:submit=move |ev| { ev.prevent_default(); add(); }>
            <label>"Name "<input id="member-name" prop:value=name
                on:input=move |ev| set_name.set(event_target_value(&ev))/></label>
            <label>"Role "<select id="member-role" on:change=move |ev| set_role.set(event_target_value(&ev))>
                {Role::ALL.iter().map(|r| view! {
                    <option value=r.as_str() selected=*r == Role::Member>{r.as_str()}</option>
                }).collect_view()}
            </select></label>
            <button type="submit">"Add or change"</button>
        </form>
        {move || status.get().map(|s| match s {
            Ok(m) => view! { <p id="member-status">{m}</p> }.into_any(),
            Err(e) => view! { <p class="error" id="member-status">{e}</p> }.into_any(),
        })}
        <Transition fallback=|| view! { <p>"Loading members…"</p> }>
            {move || members.get().map(|res| match res {
                Err(e) => view! { <p class="error">{e.to_string()}</p> }.into_any(),
                Ok(list) => view! {
                    <table id="members-table">
                        <thead><tr><th>"Name"</th><th>"Role"</th><th></th></tr></thead>
                        <tbody>{list.into_iter().map(|m| {
                            let id = m.user_id.clone();
                            view! {
                                <tr><td>{m.name.clone()}</td><td>{m.role.as_str()}</td>
                                    <td><button on:click=move |_| remove(id.clone())>"Remove"</button></td></tr>
                            }
                        }).collect_view()}</tbody>
                    </table>
                }.into_any(),
            })}
        </Transition>
    }
}

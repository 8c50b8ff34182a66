//! The sslab dashboard: a client-side Leptos app that talks to `/api/v1` only.

mod api;
mod attention;
mod bulk;
mod chart;
mod confirm;
mod decoders;
mod labels;
mod memorization;
mod pages;
mod plot;
mod probes;
mod projects;
mod reevaluate;
mod search;
mod sweep_chart;
mod system;
mod typed_fields;

use leptos::prelude::*;
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;
use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    // Who is signed in; a 401 here sends the visitor to the sign-in page.
    let me = LocalResource::new(|| async {
        let me = api::get::<sslab_shared::auth::Me>("/session").await;
        if let Ok(m) = &me {
            api::set_csrf(m.csrf.clone());
        }
        me
    });
    view! {
        <Router>
            <header class="top">
                <A href="/">"sslab"</A>
                <nav>
                    <A href="/projects">"Projects"</A>
                    <A href="/">"Runs"</A>
                    <A href="/runs/new">"New run"</A>
                    <A href="/sweeps">"Sweeps"</A>
                    <A href="/datasets">"Data sets"</A>
                    <A href="/audits">"Audits"</A>
                    <A href="/studies">"Studies"</A>
                    <A href="/workers">"Workers"</A>
                    <A href="/api">"API"</A>
                </nav>
                <search::SearchBox/>
                <Transition fallback=|| ()>
                    {move || me.get().and_then(|m| m.ok()).map(|m| view! { <pages::account::AccountBar me=m/> })}
                </Transition>
            </header>
            <main>
                <Routes fallback=|| view! { <p class="error">"No such page."</p> }>
                    <Route path=path!("/signin") view=pages::account::SignInPage/>
                    <Route path=path!("/tokens") view=pages::account::TokensPage/>
                    <Route path=path!("/api") view=pages::api_reference::ApiReferencePage/>
                    <Route path=path!("/members") view=pages::account::MembersPage/>
                    <Route path=path!("/") view=pages::runs::RunsPage/>
                    <Route path=path!("/runs") view=pages::runs::RunsPage/>
                    <Route path=path!("/projects") view=pages::projects::ProjectsPage/>
                    <Route path=path!("/runs/new") view=pages::new_run::NewRunPage/>
                    <Route path=path!("/runs/:id") view=pages::run::RunPage/>
                    <Route path=path!("/sweeps") view=pages::sweeps::SweepsPage/>
                    <Route path=path!("/sweeps/new") view=pages::new_sweep::NewSweepPage/>
                    <Route path=path!("/sweeps/:id") view=pages::sweeps::SweepPage/>
                    <Route path=path!("/compare") view=pages::compare::ComparePage/>
                    <Route path=path!("/datasets") view=pages::datasets::DatasetsPage/>
                    <Route path=path!("/audits") view=pages::audits::AuditsPage/>
                    <Route path=path!("/audits/:id") view=pages::audits::AuditPage/>
                    <Route path=path!("/workers") view=pages::workers::WorkersPage/>
                    <Route path=path!("/studies") view=pages::studies::StudiesPage/>
                    <Route path=path!("/studies/:id") view=pages::studies::StudyPage/>
                </Routes>
            </main>
        </Router>
    }
}

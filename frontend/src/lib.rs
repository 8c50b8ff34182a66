//! The sslab dashboard: a client-side Leptos app that talks to `/api/v1` only.

mod api;
mod chart;
mod memorization;
mod pages;
mod probes;
mod sweep_chart;

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
    view! {
        <Router>
            <header class="top">
                <A href="/">"sslab"</A>
                <nav>
                    <A href="/">"Runs"</A>
                    <A href="/runs/new">"New run"</A>
                    <A href="/sweeps">"Sweeps"</A>
                    <A href="/datasets">"Data sets"</A>
                    <A href="/audits">"Audits"</A>
                </nav>
            </header>
            <main>
                <Routes fallback=|| view! { <p class="error">"No such page."</p> }>
                    <Route path=path!("/") view=pages::runs::RunsPage/>
                    <Route path=path!("/runs/new") view=pages::new_run::NewRunPage/>
                    <Route path=path!("/runs/:id") view=pages::run::RunPage/>
                    <Route path=path!("/sweeps") view=pages::sweeps::SweepsPage/>
                    <Route path=path!("/sweeps/new") view=pages::new_sweep::NewSweepPage/>
                    <Route path=path!("/sweeps/:id") view=pages::sweeps::SweepPage/>
                    <Route path=path!("/compare") view=pages::compare::ComparePage/>
                    <Route path=path!("/datasets") view=pages::datasets::DatasetsPage/>
                    <Route path=path!("/audits") view=pages::audits::AuditsPage/>
                    <Route path=path!("/audits/:id") view=pages::audits::AuditPage/>
                </Routes>
            </main>
        </Router>
    }
}

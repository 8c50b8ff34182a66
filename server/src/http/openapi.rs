//! The OpenAPI 3 document of the API, generated from the handlers'
//! `#[utoipa::path]` attributes and the `sslab_shared` types, served at
//! `GET /api/v1/openapi.json`. `tests/integration/openapi.rs` checks it against the
//! router and the OpenAPI schema.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    accounts, audits, cka, datasets, decoders, deletes, demos, events, exports, labels, projects,
    recipes, run_files, runs, search, studies, sweeps, worker_decoders, worker_jobs, workers,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sslab",
        description = "Self-supervised vision research platform. Send `Authorization: Bearer sslab_…` (a token), or the dashboard's session cookie with `X-CSRF-Token` on changes."
    ),
    servers((url = "/api/v1")),
    paths(
        runs::create, runs::list, runs::read, runs::cancel, runs::metrics, runs::memorization,
        runs::system, run_files::list, run_files::spec, run_files::metrics_csv,
        runs::evaluations, runs::evaluate, runs::evaluation_jobs, runs::evaluation_job,
        runs::cancel_evaluation, runs::checkpoint, events::stream,
        labels::update_run, labels::update_sweep, labels::update_audit, deletes::run, deletes::sweep, deletes::audit, deletes::dataset,
        sweeps::create, sweeps::list, sweeps::read, sweeps::summary, sweeps::cancel,
        sweeps::requeue, sweeps::compare,
        audits::create, audits::list, audits::read, audits::cancel, audits::report,
        audits::image, audits::reconstruction, audits::examples,
        datasets::import, datasets::upload, datasets::list, datasets::read, datasets::samples,
        accounts::sign_in, accounts::me, accounts::sign_out, accounts::switch_team,
        accounts::set_password,
        accounts::list_tokens, accounts::create_token, accounts::revoke_token,
        accounts::members, accounts::add_member, accounts::remove_member,
        demos::publish, demos::list, demos::unpublish, demos::manifest, demos::file,
        exports::export_run, exports::export_audit, exports::read,
        cka::create, cka::read, cka::cancel, search::search,
        decoders::create, decoders::list, decoders::read, decoders::grid, decoders::cancel,
        studies::create, studies::list, studies::read, studies::report, studies::report_md,
        studies::chart, studies::cancel,
        projects::list, projects::create, projects::remove, recipes::list,
        workers::register, workers::claim, workers::start, workers::heartbeat, workers::metrics,
        workers::logs, workers::upload, workers::download, workers::data, workers::end,
        workers::release, worker_jobs::evaluation_heartbeat, worker_jobs::evaluation_checkpoint,
        worker_jobs::evaluation_data, worker_jobs::evaluation_end, worker_jobs::evaluation_release,
        worker_jobs::audit_progress, worker_jobs::audit_checkpoint, worker_jobs::audit_data,
        worker_jobs::audit_upload, worker_jobs::audit_image_upload, worker_jobs::audit_end, worker_jobs::audit_release,
        worker_jobs::cka_heartbeat, worker_jobs::cka_checkpoint, worker_jobs::cka_data, worker_jobs::cka_end,
        worker_jobs::cka_release, worker_decoders::decoder_progress,
        worker_decoders::decoder_checkpoint, worker_decoders::decoder_data,
        worker_decoders::decoder_upload, worker_decoders::decoder_end,
        worker_decoders::decoder_release,
        workers::list, workers::drain, runs::logs,
        health, document,
    ),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sslab_…")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
    }
}

/// Whether the server is up.
#[utoipa::path(get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub async fn health() -> &'static str {
    "ok"
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "the OpenAPI 3 document", body = serde_json::Value)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

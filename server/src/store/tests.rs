use super::queue::MAX_ATTEMPTS;
use super::*;
use sslab_shared::RunSpec;
use sslab_shared::api::{Evaluation, EvaluationRequest, MetricPoint, RunStatus, SystemSample};
use sslab_shared::sweep::SweepSpec;
use sslab_shared::worker::MetricBatch;

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

fn spec() -> RunSpec {
    let mut s = RunSpec::default();
    s.optimizer.batch_size = 100;
    s
}

/// The embedded migrations are the ones sqlx reads from `migrations/`,
/// checksums included: a database migrated by an earlier build stays valid.
#[test]
fn embedded_migrations_match_the_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for (dialect, dir) in [(Dialect::Sqlite, "sqlite"), (Dialect::Postgres, "postgres")] {
        let on_disk = sqlx::migrate::resolve_blocking(&root.join(dir)).unwrap();
        let embedded = migrator(dialect);
        let key = |m: &Migration| {
            (
                m.version,
                m.checksum.to_vec(),
                m.no_tx,
                m.description.to_string(),
            )
        };
        assert_eq!(
            embedded.iter().map(key).collect::<Vec<_>>(),
            on_disk.iter().map(|(m, _)| key(m)).collect::<Vec<_>>(),
            "{dir}"
        );
        assert!(embedded.iter().count() >= 21, "{dir}");
    }
}

/// A missing float and a present one bound to the same statements in
/// turn, on PostgreSQL when `SSLAB_TEST_DATABASE_URL` names one.
#[tokio::test]
async fn missing_and_present_floats_alternate_on_postgres() {
    use sqlx::Connection;
    let Ok(admin) = std::env::var("SSLAB_TEST_DATABASE_URL") else {
        return;
    };
    let mut conn = sqlx::postgres::PgConnection::connect(&admin).await.unwrap();
    let name = format!("sslab_store_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let store = Store::connect(&format!("{base}/{name}")).await.unwrap();
    for round in 0..4 {
        let present = round % 2 == 1;
        store
            .create_run(&spec(), &Owner::default_team(), None)
            .await
            .unwrap();
        let Claim { run, lease } = store.claim_next("w", 10_000).await.unwrap().unwrap();
        let m = MetricPoint {
            step: 1,
            epoch: 0,
            loss: 1.0,
            lr: 0.1,
            images_per_sec: 10.0,
            data_wait: present.then_some(0.1),
            online_probe_acc: present.then_some(0.5),
        };
        let sample = SystemSample {
            at: 1_000 + round,
            step: 1,
            cpu_percent: 150.0,
            rss_bytes: 1 << 30,
            gpu_util: present.then_some(87.5),
            gpu_memory_bytes: present.then_some(1 << 33),
        };
        let batch = MetricBatch {
            points: vec![m],
            total_steps: Some(8),
            memorization: vec![],
            system: vec![sample.clone()],
        };
        assert!(store.add_metrics(&lease, &batch).await.unwrap());
        assert_eq!(store.system_samples(&run.id).await.unwrap(), [sample]);
        let ev = Evaluation {
            layer: "backbone".into(),
            probe: "knn".into(),
            metric: "top1".into(),
            value: 0.75,
            settings: serde_json::json!({}),
            job_id: None,
        };
        let evs = if present { vec![ev] } else { vec![] };
        assert!(
            store
                .finish_run(&lease, RunStatus::Succeeded, None, &evs)
                .await
                .unwrap()
        );
        let done = store.run(&run.id).await.unwrap().unwrap();
        assert_eq!(done.knn_backbone, present.then_some(0.75), "round {round}");
    }
}

#[tokio::test]
async fn lifecycle_and_pagination() {
    let (store, _dir) = store().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            store
                .create_run(&spec(), &Owner::default_team(), None)
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let p1 = store
        .list_runs(2, None, &RunFilter::team("default"))
        .await
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = store
        .list_runs(
            2,
            p1.next_page_token.as_deref(),
            &RunFilter::team("default"),
        )
        .await
        .unwrap();
    let p3 = store
        .list_runs(
            2,
            p2.next_page_token.as_deref(),
            &RunFilter::team("default"),
        )
        .await
        .unwrap();
    assert_eq!(p3.items.len(), 1);
    assert!(p3.next_page_token.is_none());
    let mut seen: Vec<String> = [p1, p2, p3]
        .into_iter()
        .flat_map(|p| p.items)
        .map(|r| r.id)
        .collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);

    let Claim {
        run: claimed,
        lease: w1,
    } = store.claim_next("w1", 10_000).await.unwrap().unwrap();
    assert_eq!(claimed.status, RunStatus::Running);
    // Another worker's lease, and a lease of the same worker's earlier claim.
    let w2 = Lease {
        token: "w2".into(),
        ..w1.clone()
    };
    let stale = Lease {
        token: "w1".into(),
        ..w1.clone()
    };
    assert_eq!(store.heartbeat(&w1, 10_000).await.unwrap(), Some(false));
    assert_eq!(store.heartbeat(&w2, 10_000).await.unwrap(), None);
    assert_eq!(store.heartbeat(&stale, 10_000).await.unwrap(), None);
    let m = MetricPoint {
        step: 1,
        epoch: 0,
        loss: 3.0,
        lr: 0.1,
        images_per_sec: 10.0,
        data_wait: Some(0.02),
        online_probe_acc: Some(0.5),
    };
    let batch = MetricBatch {
        points: vec![m.clone()],
        total_steps: Some(8),
        memorization: vec![],
        system: vec![SystemSample {
            at: 5,
            step: 1,
            cpu_percent: 90.0,
            rss_bytes: 1 << 20,
            gpu_util: None,
            gpu_memory_bytes: None,
        }],
    };
    // A stale lease stores nothing; the holder's batch sent twice stores once.
    assert!(!store.add_metrics(&stale, &batch).await.unwrap());
    for _ in 0..2 {
        assert!(store.add_metrics(&w1, &batch).await.unwrap());
    }
    assert_eq!(store.metrics(&claimed.id, 0, 10).await.unwrap(), vec![m]);
    assert_eq!(
        store.system_samples(&claimed.id).await.unwrap(),
        batch.system
    );
    assert!(store.metrics(&claimed.id, 1, 10).await.unwrap().is_empty());
    let ev = Evaluation {
        layer: "backbone".into(),
        probe: "knn".into(),
        metric: "top1".into(),
        value: 0.75,
        settings: serde_json::json!({"k": 20}),
        job_id: None,
    };
    assert!(
        !store
            .finish_run(&w2, RunStatus::Succeeded, None, &[ev.clone()])
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_run(&w1, RunStatus::Succeeded, None, &[ev.clone()])
            .await
            .unwrap()
    );
    let done = store.run(&claimed.id).await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(done.knn_backbone, Some(0.75));
    assert_eq!(done.last_loss, Some(3.0));
    assert_eq!(
        store.evaluations(&claimed.id, None).await.unwrap(),
        vec![ev.clone()]
    );

    // A re-evaluation job adds rows of its own beside training's.
    let req = EvaluationRequest {
        eval: Default::default(),
    };
    let job = store
        .create_evaluation_job(&claimed.id, &req, None)
        .await
        .unwrap();
    let (got, lease) = store
        .claim_next_evaluation("w1", 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, job.id);
    // Evaluation jobs renew their lease like runs.
    assert_eq!(store.heartbeat(&lease, 10_000).await.unwrap(), Some(false));
    assert!(
        store
            .finish_evaluation(&got, &lease, RunStatus::Succeeded, None, &[ev.clone()])
            .await
            .unwrap()
    );
    let all = store.evaluations(&claimed.id, None).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].job_id.as_deref(), Some(job.id.as_str()));
    assert_eq!(
        store.evaluations(&claimed.id, Some("")).await.unwrap(),
        vec![ev]
    );
    assert_eq!(
        store.evaluation_jobs(&claimed.id).await.unwrap()[0].status,
        RunStatus::Succeeded
    );
    let only_done = store
        .list_runs(
            10,
            None,
            &RunFilter {
                status: Some(RunStatus::Succeeded),
                ..RunFilter::team("default")
            },
        )
        .await
        .unwrap();
    assert_eq!(only_done.items.len(), 1);
}

/// A failed run of a sweep keeps its rows but is counted, not averaged;
/// re-queueing the sweep starts it over.
#[tokio::test]
async fn sweep_runs_failures_and_requeue() {
    let (store, _dir) = store().await;
    let mut sweep = SweepSpec {
        seeds: vec![0],
        axes: vec![sslab_shared::sweep::SweepAxis {
            path: "projector.dims".into(),
            values: vec![serde_json::json!("32-8"), serde_json::json!("32-16")],
            min: None,
            max: None,
            log: false,
            integer: false,
        }],
        ..SweepSpec::default()
    };
    sweep.base.optimizer.batch_size = 100;
    let points = sweep.expand(10).unwrap();
    let (created, fresh) = store
        .create_sweep(&sweep, &points, &Owner::default_team(), None)
        .await
        .unwrap();
    assert!(fresh);
    assert_eq!(created.counts.queued, 2);
    let row = |v: f64| Evaluation {
        layer: "backbone".into(),
        probe: "knn".into(),
        metric: "top1".into(),
        value: v,
        settings: serde_json::Value::Null,
        job_id: None,
    };
    // Claimed in expansion order.
    let Claim { run: first, lease } = store.claim_next("w", 10_000).await.unwrap().unwrap();
    assert_eq!(first.spec.projector.dims, "32-8");
    assert_eq!(first.sweep_id.as_deref(), Some(created.id.as_str()));
    store
        .finish_run(&lease, RunStatus::Succeeded, None, &[row(0.8)])
        .await
        .unwrap();
    let second = store.claim_next("w", 10_000).await.unwrap().unwrap();
    store
        .finish_run(&second.lease, RunStatus::Failed, Some("boom"), &[row(0.1)])
        .await
        .unwrap();
    let runs = store.sweep_runs(&created.id).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].error.as_deref(), Some("boom"));
    let (agg, excluded) = crate::sweep::aggregate(&["projector.dims".to_string()], &runs);
    assert_eq!(excluded.failed, 1);
    assert_eq!(agg.len(), 1);
    assert_eq!(agg[0].mean, 0.8);
    assert_eq!(store.requeue_sweep(&created.id).await.unwrap(), 1);
    let after = store.sweep(&created.id).await.unwrap().unwrap();
    assert_eq!((after.counts.queued, after.counts.succeeded), (1, 1));
    let again = store.run(&second.run.id).await.unwrap().unwrap();
    assert_eq!((again.status, again.error), (RunStatus::Queued, None));
    assert_eq!(store.cancel_sweep(&created.id).await.unwrap(), 1);
    let page = store
        .list_sweeps("default", 10, None, &LabelFilter::default())
        .await
        .unwrap();
    assert_eq!(page.items[0].counts.cancelled, 1);
}

#[tokio::test]
async fn idempotency_cancel_and_orphans() {
    let (store, _dir) = store().await;
    let (a, created) = store
        .create_run(&spec(), &Owner::default_team(), Some("k1"))
        .await
        .unwrap();
    assert!(created);
    let (b, created) = store
        .create_run(&spec(), &Owner::default_team(), Some("k1"))
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(a.id, b.id);

    // A queued run is cancelled at once. (Later by a clock tick: runs of
    // one millisecond are claimed in no set order.)
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let queued = store
        .create_run(&spec(), &Owner::default_team(), None)
        .await
        .unwrap()
        .0;
    let Claim {
        run: claimed,
        lease,
    } = store.claim_next("w", 10_000).await.unwrap().unwrap();
    assert_eq!(claimed.id, a.id);
    let c = store.request_cancel(&queued.id).await.unwrap().unwrap();
    assert_eq!(c.status, RunStatus::Cancelled);
    // A running one is asked to stop.
    let r = store.request_cancel(&claimed.id).await.unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Running);
    assert!(r.cancel_requested);
    assert_eq!(store.heartbeat(&lease, 10_000).await.unwrap(), Some(true));

    // A worker that died: its run is re-queued, then failed after MAX_ATTEMPTS.
    let run = store
        .create_run(&spec(), &Owner::default_team(), None)
        .await
        .unwrap()
        .0;
    for attempt in 1..=MAX_ATTEMPTS {
        let got = store.claim_next("dead", -1).await.unwrap().unwrap().run;
        assert_eq!(got.id, run.id);
        assert_eq!(store.recover_orphans(false).await.unwrap(), 1);
        let after = store.run(&run.id).await.unwrap().unwrap();
        let want = if attempt < MAX_ATTEMPTS {
            RunStatus::Queued
        } else {
            RunStatus::Failed
        };
        assert_eq!(after.status, want);
    }
    assert!(
        store
            .run(&run.id)
            .await
            .unwrap()
            .unwrap()
            .error
            .unwrap()
            .contains("worker stopped")
    );
    assert!(store.run("nope").await.unwrap().is_none());
}

/// A job that requires a capability waits for a worker that has it; one
/// that requires nothing goes to any worker.
#[tokio::test]
async fn jobs_go_to_workers_that_can_run_them() {
    let (store, _dir) = store().await;
    let (run, _) = store
        .create_run(&spec(), &Owner::default_team(), None)
        .await
        .unwrap();
    sqlx::query("UPDATE runs SET requires = 'cuda' WHERE id = $1")
        .bind(&run.id)
        .execute(&store.pool)
        .await
        .unwrap();
    assert!(store.claim_next("cpu", 10_000).await.unwrap().is_none());
    let cuda = ["cuda".to_string()];
    let gpu = Claimant {
        id: "gpu",
        capabilities: &cuda,
        team: None,
    };
    let claimed = store.claim_next(gpu, 10_000).await.unwrap().unwrap();
    assert_eq!(claimed.run.id, run.id);
    assert!(claimed.lease.token.starts_with("gpu#"));
    let (plain, _) = store
        .create_run(&spec(), &Owner::default_team(), None)
        .await
        .unwrap();
    assert_eq!(
        store.claim_next(gpu, 10_000).await.unwrap().unwrap().run.id,
        plain.id
    );
    // Data on the server's disk waits for the server's own workers.
    let mut on_disk = spec();
    on_disk.data = sslab_shared::spec::DataSpec::Cifar10 {
        path: "/srv/cifar".into(),
    };
    let (local, _) = store
        .create_run(&on_disk, &Owner::default_team(), None)
        .await
        .unwrap();
    assert!(store.claim_next(gpu, 10_000).await.unwrap().is_none());
    let server = [super::SERVER_DATA.to_string()];
    let own = Claimant {
        id: "local-1",
        capabilities: &server,
        team: None,
    };
    assert_eq!(
        store.claim_next(own, 10_000).await.unwrap().unwrap().run.id,
        local.id
    );
}

/// Every kind of job goes through the same queue: evaluation jobs and audits
/// are claimed, renewed, cancelled, released and recovered as runs are.
#[tokio::test]
async fn every_job_kind_shares_the_queue() {
    let (store, _dir) = store().await;
    store
        .create_run(&spec(), &Owner::default_team(), None)
        .await
        .unwrap();
    let run = store.claim_next("w", 10_000).await.unwrap().unwrap();
    assert!(
        store
            .finish_run(&run.lease, RunStatus::Succeeded, None, &[])
            .await
            .unwrap()
    );
    let request = EvaluationRequest {
        eval: Default::default(),
    };
    // A queued evaluation is cancelled at once.
    let queued = store
        .create_evaluation_job(&run.run.id, &request, None)
        .await
        .unwrap();
    let cancelled = store.cancel_evaluation(&queued.id).await.unwrap().unwrap();
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert!(
        store
            .claim_next_evaluation("w", 10_000)
            .await
            .unwrap()
            .is_none()
    );
    // A running one hears of it at its next heartbeat.
    let job = store
        .create_evaluation_job(&run.run.id, &request, None)
        .await
        .unwrap();
    let (claimed, lease) = store
        .claim_next_evaluation("w", 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((claimed.id.as_str(), lease.attempt), (job.id.as_str(), 1));
    store.cancel_evaluation(&job.id).await.unwrap();
    assert_eq!(store.heartbeat(&lease, 10_000).await.unwrap(), Some(true));
    // Released, it is queued again, and its worker's old lease is void.
    store.release(&lease, "stopping").await.unwrap();
    assert_eq!(store.heartbeat(&lease, 10_000).await.unwrap(), None);
    // ... unless a cancel was asked: recovery then ends it as cancelled.
    let again = store.evaluation_job(&job.id).await.unwrap().unwrap();
    assert_eq!(again.status, RunStatus::Queued);
    let (_, dead) = store
        .claim_next_evaluation("dead", -1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.attempt, 2);
    assert_eq!(store.recover_orphans(false).await.unwrap(), 1);
    let ended = store.evaluation_job(&job.id).await.unwrap().unwrap();
    assert_eq!(ended.status, RunStatus::Cancelled);
}

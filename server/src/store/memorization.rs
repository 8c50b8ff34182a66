//! The memorization monitor's readings (`eval.memorization`), one per
//! attacked epoch of a run.

use sqlx::Row;
use sslab_shared::api::MemorizationPoint;

use super::{Result, Store};

impl Store {
    /// Records a reading; a run trained again from an earlier epoch
    /// replaces the reading of the same epoch.
    pub(super) async fn insert_memorization(
        conn: &mut sqlx::AnyConnection,
        run_id: &str,
        p: &MemorizationPoint,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO memorization (run_id, epoch, step, canary_top1, heldout_top1, dejavu_gap, \
             dejavu_gap_confident, canaries, heldout) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (run_id, epoch) DO UPDATE SET step = excluded.step, \
             canary_top1 = excluded.canary_top1, heldout_top1 = excluded.heldout_top1, \
             dejavu_gap = excluded.dejavu_gap, dejavu_gap_confident = excluded.dejavu_gap_confident, \
             canaries = excluded.canaries, heldout = excluded.heldout",
        )
        .bind(run_id)
        .bind(p.epoch)
        .bind(p.step)
        .bind(p.canary_top1)
        .bind(p.heldout_top1)
        .bind(p.dejavu_gap)
        .bind(p.dejavu_gap_confident)
        .bind(p.canaries)
        .bind(p.heldout)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// A run's readings, by epoch.
    pub async fn memorization(&self, run_id: &str) -> Result<Vec<MemorizationPoint>> {
        let rows = sqlx::query(
            "SELECT epoch, step, canary_top1, heldout_top1, dejavu_gap, dejavu_gap_confident, \
             canaries, heldout FROM memorization WHERE run_id = $1 ORDER BY epoch",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MemorizationPoint {
                    epoch: r.try_get("epoch")?,
                    step: r.try_get("step")?,
                    canary_top1: r.try_get("canary_top1")?,
                    heldout_top1: r.try_get("heldout_top1")?,
                    dejavu_gap: r.try_get("dejavu_gap")?,
                    dejavu_gap_confident: r.try_get("dejavu_gap_confident")?,
                    canaries: r.try_get("canaries")?,
                    heldout: r.try_get("heldout")?,
                })
            })
            .collect()
    }
}

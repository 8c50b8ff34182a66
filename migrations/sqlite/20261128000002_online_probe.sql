-- The online linear probe's accuracy per step (null when the plan has none).
ALTER TABLE metrics ADD COLUMN online_probe_acc REAL;

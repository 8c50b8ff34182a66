-- Fraction of each step spent waiting for augmented data (null in older runs).
ALTER TABLE metrics ADD COLUMN data_wait REAL;

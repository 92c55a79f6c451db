-- Why the detector alarmed (InferenceResult.alarm_causes names: error_above_threshold,
-- error_above_train_level, value_step, value_quiet), collected from the alert's start to its firing.
ALTER TABLE alerts ADD COLUMN alarm_causes JSONB NOT NULL DEFAULT '[]'::jsonb;

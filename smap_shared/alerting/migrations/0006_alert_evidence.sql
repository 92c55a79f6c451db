-- Alerts that explain themselves: the frame that opened the alert (schemas.TripEvidence as JSON): the top
-- sensor's value against its reconstruction, what was crossed and by how much, and the detector's causes.
ALTER TABLE alerts ADD COLUMN evidence JSONB;

-- Child sagas, loose ends (issue 15 item 1 follow-ups).
-- The cancel cascade's safety net (`Store::cascade_cancels`) reads only the unfinished
-- children not asked to cancel yet: a campaign's finished children never enter it.
CREATE INDEX paysaga_sagas_open_children ON paysaga_sagas (parent_id)
    WHERE parent_id IS NOT NULL AND status IN ('scheduled', 'retrying', 'waiting')
      AND NOT cancel_requested;

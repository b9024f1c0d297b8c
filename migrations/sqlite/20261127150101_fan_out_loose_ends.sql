-- Child sagas, loose ends (issue 15 item 1 follow-ups); see the PostgreSQL migration.
CREATE INDEX paysaga_sagas_open_children ON paysaga_sagas (parent_id)
    WHERE parent_id IS NOT NULL AND status IN ('scheduled', 'retrying', 'waiting')
      AND cancel_requested = 0;

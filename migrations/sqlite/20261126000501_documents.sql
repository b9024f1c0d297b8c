-- Documents (e.g. KYC scans) stored by the engine, so that whoever starts a saga and the
-- worker that runs it need no shared file system. Inputs reference them by id (`doc_<hex>`).
-- `saga_id` is the saga the document was given to at start (set just before that saga's row
-- is inserted, hence no foreign key). Retention deletes `content` (personal data) once the
-- saga is final for long enough; id, type, size and hash stay.
CREATE TABLE paysaga_documents (
    id                 TEXT    PRIMARY KEY,
    content_type       TEXT    NOT NULL CHECK (content_type <> '' AND length(content_type) <= 255),
    size               INTEGER NOT NULL CHECK (size >= 0),
    sha256             TEXT    NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    content            BLOB,
    created_at         TEXT    NOT NULL,
    saga_id            TEXT,
    content_deleted_at TEXT,
    CHECK ((content IS NULL) = (content_deleted_at IS NOT NULL)),
    CHECK (content IS NULL OR length(content) = size)
);
-- The retention sweep: only documents that still hold content, oldest first.
CREATE INDEX paysaga_documents_with_content ON paysaga_documents (created_at) WHERE content IS NOT NULL;

-- Documents (e.g. KYC scans) stored by the engine, so that whoever starts a saga and the
-- worker that runs it need no shared file system. Inputs reference them by id (`doc_<hex>`).
-- `saga_id` is the saga the document was given to at start (set just before that saga's row
-- is inserted, hence no foreign key). Retention deletes `content` (personal data) once the
-- saga is final for long enough; id, type, size and hash stay.
CREATE TABLE paysaga_documents (
    id                 uuid        PRIMARY KEY,
    content_type       text        NOT NULL CHECK (content_type <> '' AND length(content_type) <= 255),
    size               bigint      NOT NULL CHECK (size >= 0),
    sha256             text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content            bytea,
    created_at         timestamptz NOT NULL DEFAULT now(),
    saga_id            uuid,
    content_deleted_at timestamptz,
    CHECK ((content IS NULL) = (content_deleted_at IS NOT NULL)),
    CHECK (content IS NULL OR octet_length(content) = size)
);
-- The retention sweep: only documents that still hold content, oldest first.
CREATE INDEX paysaga_documents_with_content ON paysaga_documents (created_at) WHERE content IS NOT NULL;

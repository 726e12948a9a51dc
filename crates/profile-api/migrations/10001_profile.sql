-- Profiles, the source of truth. A deleted profile keeps its row (deleted_at set, personal
-- fields cleared) so that a later re-create continues the version numbering: consumers rely on
-- a user's versions only ever increasing.
CREATE TABLE profile (
    id         text        PRIMARY KEY,
    name       text,
    email      text,
    country    text,
    version    bigint      NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    CONSTRAINT profile_live_has_fields CHECK (
        deleted_at IS NOT NULL OR (name IS NOT NULL AND email IS NOT NULL AND country IS NOT NULL)
    )
);

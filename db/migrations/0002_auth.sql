-- 0002: sign-in and onboarding. Astrologers' verification documents, and the indexes that the
-- refresh, admin-queue and Cognito paths need.

-- Documents an astrologer uploads for verification (ID proof, certificates). The row is written
-- when the upload URL is handed out; the file itself lives in storage under `storage_key`.
CREATE TABLE astrologer_documents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Documents belong to the person, not to the profile row: they may be uploaded before the
    -- profile is first saved. Deleting the user deletes them (right to erasure).
    astrologer_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('id_proof', 'certificate')),
    -- One storage object per row: two rows never point at the same file.
    storage_key   text NOT NULL UNIQUE,
    -- The upload URL is signed for exactly this type and size, so these describe the file.
    content_type  text NOT NULL CHECK (content_type IN (
                      'application/pdf', 'image/jpeg', 'image/png', 'image/webp', 'image/heic')),
    size_bytes    bigint NOT NULL CHECK (size_bytes BETWEEN 1 AND 10485760),  -- <= 10 MiB (API.md)
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- "This astrologer's documents, newest first": the owner's list and the admin queue's details.
CREATE INDEX astrologer_documents_owner ON astrologer_documents (astrologer_id, created_at DESC);

-- The admin review queue lists pending profiles oldest first; a partial index keeps it small
-- (approved profiles, the vast majority, are not in it).
CREATE INDEX astrologer_profiles_pending_queue
    ON astrologer_profiles (updated_at, user_id) WHERE verification = 'pending';


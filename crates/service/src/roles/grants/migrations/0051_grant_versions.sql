-- Grants in the order the permission service made them: the version of the last change
-- applied, and whether it left the role granted (1) or revoked (0). A revocation keeps its
-- row, so a stale grant arriving later cannot bring the role back.
ALTER TABLE grants ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN active BIGINT NOT NULL DEFAULT 1;

-- A lock remembers the identity that took it beyond the principal: the branch and the OIDC
-- subject its credentials proved. A write or unlock under the lock must come from the same.
ALTER TABLE locks ADD COLUMN branch TEXT;
ALTER TABLE locks ADD COLUMN subject TEXT;

-- Admin keys can be listed and revoked, and no key outlives the one that minted it: a key minted
-- by another records its parent, and revoking a key revokes every key it minted, recursively.
ALTER TABLE admin_keys ADD COLUMN parent_id TEXT;
UPDATE admin_keys SET parent_id = substr(created_by, length('admin-key:') + 1)
    WHERE created_by LIKE 'admin-key:%';
ALTER TABLE admin_keys ADD COLUMN revoked_at INTEGER;
ALTER TABLE admin_keys ADD COLUMN revoked_by TEXT;
ALTER TABLE admin_keys ADD COLUMN revoked_reason TEXT;
-- Written at most once a minute per key, so authentication does not become a write per request.
ALTER TABLE admin_keys ADD COLUMN last_used_at INTEGER;
CREATE INDEX admin_keys_by_parent ON admin_keys(parent_id);

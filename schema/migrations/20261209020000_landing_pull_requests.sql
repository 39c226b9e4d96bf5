-- `land.mode: pr` (issue 23): the pull request a landing opened (or found) on the forge, kept
-- across the task's attempts so that a new attempt's push updates the same pull request.
ALTER TABLE landings ADD COLUMN pr_number INTEGER;
ALTER TABLE landings ADD COLUMN pr_url TEXT;

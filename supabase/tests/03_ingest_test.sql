-- api.ingest_batch: idempotent batches, newer versions win, bad items named one by one.
begin;
create extension if not exists pgtap with schema extensions;
select plan(22);

set local role authenticated;
set local request.jwt.claims to '{"sub": "00000000-0000-0000-0000-0000000000a1", "role": "authenticated", "app_metadata": {"role": "system", "owner": "00000000-0000-0000-0000-0000000000f1"}}';
select api.enroll('alpha', 4, '0.1.0');

create function pg_temp.task(p_id text, p_version int, p_state text) returns jsonb
language sql as $$
  select jsonb_build_object('seq', p_version, 'task_id', p_id, 'version', p_version,
    'state', p_state, 'title', 'task ' || p_id, 'repo_url', 'https://github.com/org/app',
    'profile', 'claude', 'priority', 0, 'attempts', 1, 'max_attempts', 3, 'cost_usd', 0.5,
    'input_tokens', 100, 'output_tokens', 20, 'created_at', '2026-01-01T00:00:00Z',
    'updated_at', '2026-01-01T00:00:00Z')
$$;

select is(
  api.ingest_batch(jsonb_build_object(
    'batch_id', '0193a000-0000-7000-8000-000000000001', 'lane', 'normal',
    'streams', jsonb_build_object(
      'task_summary', jsonb_build_array(
        pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 3, 'executing')),
      'alert', '[{"seq": 4, "alert_id": "0193a000-0000-7000-8000-0000000000c1", "version": 1, "severity": "critical", "kind": "stalled", "message": "no output for 10 min", "task_id": "0193a000-0000-7000-8000-0000000000a1", "created_at": "2026-01-01T00:00:00Z", "resolved_at": null}]'::jsonb,
      'report', '[{"seq": 5, "task_id": "0193a000-0000-7000-8000-0000000000a1", "attempt": 1, "version": 1, "verdict": "ok", "summary": "done", "cost_usd": null, "created_at": "2026-01-01T00:00:00Z"}]'::jsonb,
      'health', '[{"seq": 6, "window_start": "2026-01-01T00:00:00Z", "window_len_s": 300, "version": 1, "metrics": {"agents_running": 2}}]'::jsonb),
    'ranges', '{"task_summary": {"seq_lo": 1, "seq_hi": 3}, "alert": {"seq_lo": 4, "seq_hi": 4}}'::jsonb)),
  '{"batch_id": "0193a000-0000-7000-8000-000000000001", "status": "applied", "accepted": 4, "rejected": []}',
  'a good batch is applied, every item accepted'
);
select is(
  (select row(t.version, t.state, t.cost_usd)::text from private.task_summaries t),
  '(3,executing,0.5)',
  'the task summary is stored'
);
select is((select count(*)::int from private.alerts), 1, 'the alert is stored');
select is((select count(*)::int from private.reports), 1, 'the report is stored');
select is((select count(*)::int from private.health), 1, 'the health window is stored');

select is(
  api.ingest_batch(jsonb_build_object(
    'batch_id', '0193a000-0000-7000-8000-000000000001',
    'streams', jsonb_build_object('task_summary', jsonb_build_array(
      pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 9, 'complete'))))),
  '{"batch_id": "0193a000-0000-7000-8000-000000000001", "status": "duplicate", "accepted": 4, "rejected": []}',
  'a replayed batch id answers duplicate, with the outcome of its first application'
);
select is(
  (select version from private.task_summaries), 3::bigint,
  'a duplicate applies nothing'
);

select is(
  api.ingest_batch(jsonb_build_object(
    'batch_id', '0193a000-0000-7000-8000-000000000002',
    'streams', jsonb_build_object('task_summary', jsonb_build_array(
      pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 2, 'queued'))))) ->> 'accepted',
  '1',
  'an older version is accepted'
);
select is(
  (select row(version, state)::text from private.task_summaries),
  '(3,executing)',
  'an older version never overwrites a newer one'
);
select api.ingest_batch(jsonb_build_object(
  'batch_id', '0193a000-0000-7000-8000-000000000003',
  'streams', jsonb_build_object('task_summary', jsonb_build_array(
    pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 5, 'report_generation'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 7, 'complete'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a1', 6, 'supervisory')))));
select is(
  (select row(version, state)::text from private.task_summaries),
  '(7,complete)',
  'of several versions in one batch the newest wins'
);

select is(
  api.ingest_batch(jsonb_build_object(
    'batch_id', '0193a000-0000-7000-8000-000000000004',
    'streams', jsonb_build_object(
      'task_summary', jsonb_build_array(
        pg_temp.task('0193a000-0000-7000-8000-0000000000a2', 1, 'queued'),
        pg_temp.task('not-a-uuid', 1, 'queued'),
        pg_temp.task('0193a000-0000-7000-8000-0000000000a3', 0, 'queued'),
        pg_temp.task('0193a000-0000-7000-8000-0000000000a4', 1, 'sleeping'),
        pg_temp.task('0193a000-0000-7000-8000-0000000000a5', 1, 'queued') - 'title',
        jsonb_set(pg_temp.task('0193a000-0000-7000-8000-0000000000a6', 1, 'queued'),
                  '{priority}', '"high"'),
        '42'::jsonb),
      'alert', '[{"alert_id": "0193a000-0000-7000-8000-0000000000c2", "version": 1, "severity": "fatal", "kind": "x", "message": "m", "created_at": "2026-01-01T00:00:00Z"}]'::jsonb)))
    -> 'rejected',
  '[{"stream": "alert", "index": 0, "key": "0193a000-0000-7000-8000-0000000000c2", "code": "23514", "message": "severity: must be info, warning or critical, not ''fatal''"},
    {"stream": "task_summary", "index": 1, "key": "not-a-uuid", "code": "22P02", "message": "task_id: invalid input syntax for type uuid: \"not-a-uuid\""},
    {"stream": "task_summary", "index": 2, "key": "0193a000-0000-7000-8000-0000000000a3", "code": "23514", "message": "version: must be 1 or more"},
    {"stream": "task_summary", "index": 3, "key": "0193a000-0000-7000-8000-0000000000a4", "code": "23514", "message": "state: unknown task state ''sleeping''"},
    {"stream": "task_summary", "index": 4, "key": "0193a000-0000-7000-8000-0000000000a5", "code": "23502", "message": "title: is missing"},
    {"stream": "task_summary", "index": 5, "key": "0193a000-0000-7000-8000-0000000000a6", "code": "22P02", "message": "priority: invalid input syntax for type integer: \"high\""},
    {"stream": "task_summary", "index": 6, "key": null, "code": "22023", "message": "item is not a json object"}]',
  'each bad item is rejected with its key, code and reason'
);
select is(
  (select array_agg(task_id::text order by task_id) from private.task_summaries),
  array['0193a000-0000-7000-8000-0000000000a1', '0193a000-0000-7000-8000-0000000000a2'],
  'the good item of a batch with bad ones is applied'
);
select is(
  (select row(items, accepted, rejected)::text from private.ingest_ledger
    where batch_id = '0193a000-0000-7000-8000-000000000004'),
  '(8,1,7)',
  'the ledger counts the items, the accepted and the rejected'
);
select is(
  (select row(a ->> 'status', a -> 'accepted', jsonb_array_length(a -> 'rejected'),
              a #>> '{rejected,1,code}')::text
     from api.ingest_batch('{"batch_id": "0193a000-0000-7000-8000-000000000004"}') as a),
  '(duplicate,1,7,22P02)',
  'a replay answers the accepted count and the rejected items of the first application'
);

-- Watermarks and gaps.
select is(
  (select jsonb_object_agg(stream, last_seq) from private.sync_streams),
  '{"task_summary": 3, "alert": 4}',
  'ranges advance the per-stream watermark'
);
select api.ingest_batch('{"batch_id": "0193a000-0000-7000-8000-000000000005", "ranges": {"task_summary": {"seq_lo": 4, "seq_hi": 9}}}');
select is(
  (select count(*)::int from private.alerts where kind = 'sync_gap'), 0,
  'a range that follows the watermark raises no gap'
);
select api.ingest_batch('{"batch_id": "0193a000-0000-7000-8000-000000000006", "ranges": {"task_summary": {"seq_lo": 15, "seq_hi": 20}, "alert": {"seq_lo": 2, "seq_hi": 3}}}');
select is(
  (select row(origin, severity, message)::text from private.alerts where kind = 'sync_gap'),
  '(central,warning,"task_summary: seqs 10 to 14 never arrived (batch 0193a000-0000-7000-8000-000000000006)")',
  'a range past the watermark raises a central sync_gap alert naming the missing seqs'
);
select is(
  (select jsonb_object_agg(stream, last_seq) from private.sync_streams),
  '{"task_summary": 20, "alert": 4}',
  'a watermark never goes back'
);

select throws_ok(
  $$ select api.ingest_batch('{"streams": {}}') $$, '22023', 'batch_id is missing',
  'a batch without a batch id is refused whole'
);
select throws_ok(
  $$ select api.ingest_batch('[1, 2]') $$, '22023', 'p_batch must be a json object',
  'a batch that is not an object is refused whole'
);

-- Items that cast to their type but break a rule are checked as a set (one statement per
-- stream); the answer names them with the code and words of the item-by-item check.
create temp table rule_breakers as select jsonb_build_object(
  'task_summary', jsonb_build_array(
    pg_temp.task('0193a000-0000-7000-8000-0000000000a7', 1, 'queued'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a8', 0, 'queued'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000a9', 1, 'sleeping'),
    pg_temp.task('0193a000-0000-7000-8000-0000000000aa', 1, 'queued') - 'updated_at'),
  'alert', '[{"alert_id": "0193a000-0000-7000-8000-0000000000c3", "version": 1, "severity": "info", "kind": "x", "message": "m", "created_at": "2026-01-01T00:00:00Z"},
             {"alert_id": "0193a000-0000-7000-8000-0000000000c4", "version": 1, "severity": "loud", "kind": "x", "message": "m", "created_at": "2026-01-01T00:00:00Z"},
             {"alert_id": "0193a000-0000-7000-8000-0000000000c5", "version": 1, "severity": "info", "kind": "x", "created_at": "2026-01-01T00:00:00Z"}]'::jsonb,
  'report', '[{"task_id": "0193a000-0000-7000-8000-0000000000a7", "attempt": 1, "version": 1, "verdict": "meh", "created_at": "2026-01-01T00:00:00Z"},
              {"task_id": "0193a000-0000-7000-8000-0000000000a7", "attempt": 0, "version": 1, "verdict": null, "created_at": "2026-01-01T00:00:00Z"}]'::jsonb,
  'health', '[{"window_start": "2026-01-01T00:05:00Z", "window_len_s": 300, "version": 1, "metrics": [1]},
              {"window_start": "2026-01-01T00:10:00Z", "window_len_s": 0, "version": 1, "metrics": {}},
              {"window_len_s": 300, "version": 1, "metrics": {}}]'::jsonb) as streams;
grant select on rule_breakers to authenticated;
select is(
  api.ingest_batch(jsonb_build_object('batch_id', '0193a000-0000-7000-8000-000000000007',
                                      'streams', (select streams from rule_breakers)))
    -> 'rejected',
  '[{"stream": "alert", "index": 1, "key": "0193a000-0000-7000-8000-0000000000c4", "code": "23514", "message": "severity: must be info, warning or critical, not ''loud''"},
    {"stream": "alert", "index": 2, "key": "0193a000-0000-7000-8000-0000000000c5", "code": "23502", "message": "message: is missing"},
    {"stream": "health", "index": 0, "key": "2026-01-01T00:05:00Z/300", "code": "22023", "message": "metrics: must be a json object"},
    {"stream": "health", "index": 1, "key": "2026-01-01T00:10:00Z/0", "code": "23514", "message": "window_len_s: must be 1 or more"},
    {"stream": "health", "index": 2, "key": null, "code": "23502", "message": "window_start: is missing"},
    {"stream": "report", "index": 0, "key": "0193a000-0000-7000-8000-0000000000a7:1", "code": "23514", "message": "verdict: must be ok, issue or null, not ''meh''"},
    {"stream": "report", "index": 1, "key": "0193a000-0000-7000-8000-0000000000a7:0", "code": "23514", "message": "attempt: must be 1 or more"},
    {"stream": "task_summary", "index": 1, "key": "0193a000-0000-7000-8000-0000000000a8", "code": "23514", "message": "version: must be 1 or more"},
    {"stream": "task_summary", "index": 2, "key": "0193a000-0000-7000-8000-0000000000a9", "code": "23514", "message": "state: unknown task state ''sleeping''"},
    {"stream": "task_summary", "index": 3, "key": "0193a000-0000-7000-8000-0000000000aa", "code": "23502", "message": "updated_at: is missing"}]',
  'items that break a rule are rejected as a set, in the words of the item-by-item check'
);
reset role;
select results_eq(
  $$ select s.key, c.i, c.code, c.message
       from rule_breakers, jsonb_each(streams) as s,
            private.check_items(s.key, s.value, (select system_id from private.systems
                                                   where name = 'alpha')) as c
      order by 1, 2 $$,
  $$ select s.key, e.i, k.code, k.message
       from rule_breakers, jsonb_each(streams) as s,
            jsonb_array_elements(s.value) with ordinality as e(item, i),
            private.check_item(s.key, e.item, (select system_id from private.systems
                                                 where name = 'alpha')) as k
      where k.code is not null
      order by 1, 2 $$,
  'the set check and the item-by-item check name the same items with the same words'
);

select * from finish();
rollback;

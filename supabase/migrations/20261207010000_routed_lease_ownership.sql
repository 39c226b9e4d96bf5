-- A routed task's rows follow its lease, and its origin can cancel, retry and re-pin it
-- (issue 27, routing items 1 and 2).
--
-- 1. Ownership after a reclaim. The first system to ship a task's summary owned its row, so
--    after a reclaim the system that finished the task had its summary and report refused
--    (42501) and the central showed the system that lost the lease. Now, for a routed task,
--    the summary and the reports belong to the system that holds the lease (or held it last:
--    `routed_tasks.lease_owner` stays on a finished or cancelled task): its items replace
--    whatever another system wrote before, whatever their versions; anyone else's (a system
--    whose lease was taken back, a late batch) is kept in `private.stale_attempts` (call
--    `summary` or `report`) and never applied, as a late `complete` is. A reclaimed attempt's
--    reports are moved there too when the holder's first report arrives. Alerts about a routed
--    task are accepted from any system of its owner (they are each system's own rows).
-- 2. Control from the origin. `api.cancel_routed`, `api.retry_routed` and `api.pin_routed`,
--    allowed to the systems of the task's owner. A cancel ends the lease at once (state
--    `cancelled`, the attempt ended `cancelled`); the executor learns it from its next
--    heartbeat (`revoked`, reason `cancelled`), stops its agent, and its late writes are stale.
--    A retry queues a failed, blocked, flagged (done with verdict `issue`) or cancelled task
--    again with a fresh attempt budget. A new pin that the lease holder does not match takes
--    the lease back (reason `repinned`) without spending an attempt.

alter table private.routed_tasks drop constraint routed_tasks_state_check;
alter table private.routed_tasks add constraint routed_tasks_state_check
  check (state in ('queued', 'leased', 'running', 'done', 'failed', 'blocked', 'cancelled'));
-- The attempts one submission or retry may spend (null: max_attempts as submitted).
alter table private.routed_tasks add column attempt_budget integer
  check (attempt_budget >= 1);

alter table private.task_attempts drop constraint task_attempts_outcome_check;
alter table private.task_attempts add constraint task_attempts_outcome_check
  check (outcome in ('done', 'failed', 'released', 'lease_lost', 'cancelled', 'repinned'));

alter table private.stale_attempts drop constraint stale_attempts_call_check;
alter table private.stale_attempts add constraint stale_attempts_call_check
  check (call in ('progress', 'complete', 'release', 'summary', 'report'));

-- Whether `p_task` is a routed task of the owner of `p_system`: rows about it follow its
-- lease, not the first writer.
create function private.routed_for(p_task uuid, p_system uuid) returns boolean
language sql stable
set search_path = ''
as $$
  select exists (select from private.routed_tasks r
                   join private.systems s on s.owner = r.owner
                  where r.task_id = p_task and s.system_id = p_system)
$$;
revoke execute on function private.routed_for(uuid, uuid) from public;

-- As before (`..._central.sql`), with routed tasks of the caller's owner exempt from the
-- first-writer rule (the item-by-item path of the ingest).
create or replace function private.foreign_item(p_stream text, p_item jsonb, p_system uuid)
returns boolean
language sql stable
set search_path = ''
as $$
  select case p_stream
    when 'task_summary' then exists (
      select from private.task_summaries t
       where t.task_id = (p_item ->> 'task_id')::uuid and t.system_id <> p_system)
      and not private.routed_for((p_item ->> 'task_id')::uuid, p_system)
    when 'alert' then exists (
      select from private.alerts a
       where a.alert_id = (p_item ->> 'alert_id')::uuid and a.system_id <> p_system)
      or (exists (
      select from private.task_summaries t
       where t.task_id = (p_item ->> 'task_id')::uuid and t.system_id <> p_system)
      and not private.routed_for((p_item ->> 'task_id')::uuid, p_system))
    when 'report' then (exists (
      select from private.reports r
       where r.task_id = (p_item ->> 'task_id')::uuid
         and r.attempt = (p_item ->> 'attempt')::integer and r.system_id <> p_system)
      or exists (
      select from private.task_summaries t
       where t.task_id = (p_item ->> 'task_id')::uuid and t.system_id <> p_system))
      and not private.routed_for((p_item ->> 'task_id')::uuid, p_system)
    else false
  end
$$;

-- The ingest's set-based check (`..._set_based_ingest.sql`), with routed tasks of the caller's
-- owner exempt from the first-writer rule: their rows follow the lease when they are applied.
create or replace function private.check_items(p_stream text, p_items jsonb, p_system uuid)
returns table (i bigint, code text, message text)
language plpgsql stable
set search_path = ''
as $$
begin
  if exists (select from jsonb_array_elements(p_items) as e(item)
              where jsonb_typeof(e.item) <> 'object') then
    raise exception 'an item is not a json object' using errcode = '22023';
  end if;
  case p_stream
    when 'task_summary' then
      return query
      select c.i, c.code, c.message from (
        select e.i,
          case when m.missing is not null then '23502'
               when x.state not in ('created', 'queued', 'executing', 'report_generation',
                 'supervisory', 'complete', 'alert', 'error', 'retry', 'failed', 'blocked',
                 'waiting_quota', 'cancelled') then '23514'
               when x.version < 1 then '23514'
               when exists (select from private.task_summaries t
                             where t.task_id = x.task_id and t.system_id <> p_system)
                    and not private.routed_for(x.task_id, p_system)
                 then '42501'
          end as code,
          case when m.missing is not null then m.missing || ': is missing'
               when x.state not in ('created', 'queued', 'executing', 'report_generation',
                 'supervisory', 'complete', 'alert', 'error', 'retry', 'failed', 'blocked',
                 'waiting_quota', 'cancelled') then format('state: unknown task state %L', x.state)
               when x.version < 1 then 'version: must be 1 or more'
               else 'the task or row belongs to another system'
          end as message
        from jsonb_array_elements(p_items) with ordinality as e(item, i)
        cross join lateral jsonb_populate_record(null::private.task_summary_item, e.item) as x
        cross join lateral (select case
          when x.task_id is null then 'task_id'
          when x.version is null then 'version'
          when x.state is null then 'state'
          when x.title is null then 'title'
          when x.created_at is null then 'created_at'
          when x.updated_at is null then 'updated_at'
        end as missing) as m
      ) as c
      where c.code is not null;
    when 'alert' then
      return query
      select c.i, c.code, c.message from (
        select e.i,
          case when m.missing is not null then '23502'
               when x.severity not in ('info', 'warning', 'critical') then '23514'
               when x.version < 1 then '23514'
               when exists (select from private.alerts a
                             where a.alert_id = x.alert_id and a.system_id <> p_system)
                 or (exists (select from private.task_summaries t
                              where t.task_id = x.task_id and t.system_id <> p_system)
                     and not private.routed_for(x.task_id, p_system))
                 then '42501'
          end as code,
          case when m.missing is not null then m.missing || ': is missing'
               when x.severity not in ('info', 'warning', 'critical')
                 then format('severity: must be info, warning or critical, not %L', x.severity)
               when x.version < 1 then 'version: must be 1 or more'
               else 'the task or row belongs to another system'
          end as message
        from jsonb_array_elements(p_items) with ordinality as e(item, i)
        cross join lateral jsonb_populate_record(null::private.alert_item, e.item) as x
        cross join lateral (select case
          when x.alert_id is null then 'alert_id'
          when x.version is null then 'version'
          when x.severity is null then 'severity'
          when x.kind is null then 'kind'
          when x.message is null then 'message'
          when x.created_at is null then 'created_at'
        end as missing) as m
      ) as c
      where c.code is not null;
    when 'report' then
      return query
      select c.i, c.code, c.message from (
        select e.i,
          case when m.missing is not null then '23502'
               when x.verdict not in ('ok', 'issue') then '23514'
               when x.attempt < 1 then '23514'
               when x.version < 1 then '23514'
               when (exists (select from private.reports r
                              where r.task_id = x.task_id and r.attempt = x.attempt
                                and r.system_id <> p_system)
                     or exists (select from private.task_summaries t
                                 where t.task_id = x.task_id and t.system_id <> p_system))
                    and not private.routed_for(x.task_id, p_system)
                 then '42501'
          end as code,
          case when m.missing is not null then m.missing || ': is missing'
               when x.verdict not in ('ok', 'issue')
                 then format('verdict: must be ok, issue or null, not %L', x.verdict)
               when x.attempt < 1 then 'attempt: must be 1 or more'
               when x.version < 1 then 'version: must be 1 or more'
               else 'the task or row belongs to another system'
          end as message
        from jsonb_array_elements(p_items) with ordinality as e(item, i)
        cross join lateral jsonb_populate_record(null::private.report_item, e.item) as x
        cross join lateral (select case
          when x.task_id is null then 'task_id'
          when x.attempt is null then 'attempt'
          when x.version is null then 'version'
          when x.created_at is null then 'created_at'
        end as missing) as m
      ) as c
      where c.code is not null;
    when 'health' then
      return query
      select c.i, c.code, c.message from (
        select e.i,
          case when m.missing is not null then '23502'
               when jsonb_typeof(x.metrics) <> 'object' then '22023'
               when x.window_len_s < 1 then '23514'
               when x.version < 1 then '23514'
          end as code,
          case when m.missing is not null then m.missing || ': is missing'
               when jsonb_typeof(x.metrics) <> 'object' then 'metrics: must be a json object'
               when x.window_len_s < 1 then 'window_len_s: must be 1 or more'
               else 'version: must be 1 or more'
          end as message
        from jsonb_array_elements(p_items) with ordinality as e(item, i)
        cross join lateral jsonb_populate_record(null::private.health_item, e.item) as x
        cross join lateral (select case
          when x.window_start is null then 'window_start'
          when x.window_len_s is null then 'window_len_s'
          when x.version is null then 'version'
          when x.metrics is null then 'metrics'
        end as missing) as m
      ) as c
      where c.code is not null;
    else
      raise exception 'unknown stream %', p_stream using errcode = '22023';
  end case;
end
$$;

revoke execute on function private.check_items(text, jsonb, uuid) from public;

-- The body of `api.ingest_batch` (`..._set_based_ingest.sql`), with the summaries and reports
-- of routed tasks following the lease.
create or replace function private.ingest_batch_once(p_batch jsonb) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid;
  v_batch_id uuid;
  v_lane text;
  v_streams jsonb;
  v_ranges jsonb;
  v_stream text;
  v_items jsonb;
  v_good jsonb;
  v_rejected jsonb := '[]'::jsonb;
  v_stream_rejected jsonb;
  v_bad bigint[];
  v_total integer := 0;
  v_range jsonb;
  v_lo bigint;
  v_hi bigint;
  v_last bigint;
begin
  if jsonb_typeof(p_batch) is distinct from 'object' then
    raise exception 'p_batch must be a json object' using errcode = '22023';
  end if;
  if coalesce(p_batch ->> 'batch_id', '') = '' then
    raise exception 'batch_id is missing' using errcode = '22023';
  end if;
  begin
    v_batch_id := (p_batch ->> 'batch_id')::uuid;
  exception when invalid_text_representation then
    raise exception 'batch_id is not a uuid: %', p_batch ->> 'batch_id' using errcode = '22023';
  end;
  v_lane := p_batch ->> 'lane';
  if v_lane is not null and v_lane not in ('urgent', 'normal') then
    raise exception 'lane must be urgent or normal, not %', v_lane using errcode = '22023';
  end if;
  v_streams := coalesce(p_batch -> 'streams', '{}'::jsonb);
  if jsonb_typeof(v_streams) <> 'object' then
    raise exception 'streams must be a json object' using errcode = '22023';
  end if;
  v_ranges := coalesce(p_batch -> 'ranges', '{}'::jsonb);
  if jsonb_typeof(v_ranges) <> 'object' then
    raise exception 'ranges must be a json object' using errcode = '22023';
  end if;

  v_system := private.caller_system();

  insert into private.ingest_ledger (system_id, batch_id, lane)
  values (v_system, v_batch_id, v_lane)
  on conflict do nothing;
  if not found then
    return jsonb_build_object('batch_id', v_batch_id, 'status', 'duplicate');
  end if;

  for v_stream, v_items in select key, value from jsonb_each(v_streams) loop
    if jsonb_typeof(v_items) = 'null' then
      continue;
    end if;
    if jsonb_typeof(v_items) <> 'array' then
      raise exception 'streams.%: must be a json array', v_stream using errcode = '22023';
    end if;
    v_total := v_total + jsonb_array_length(v_items);

    -- The bad items are named, the good ones go on: checked as a set, or item by item when
    -- one does not even cast to its type (that check names the field).
    begin
      select coalesce(jsonb_agg(jsonb_build_object(
               'stream', v_stream, 'index', c.i - 1,
               'key', private.item_key(v_stream, v_items -> (c.i - 1)::integer),
               'code', c.code, 'message', c.message) order by c.i), '[]'::jsonb),
             coalesce(array_agg(c.i), '{}')
        into v_stream_rejected, v_bad
        from private.check_items(v_stream, v_items, v_system) as c;
      if cardinality(v_bad) = 0 then
        v_good := v_items;
      else
        select coalesce(jsonb_agg(e.item order by e.i), '[]'::jsonb) into v_good
          from jsonb_array_elements(v_items) with ordinality as e(item, i)
         where e.i <> all (v_bad);
      end if;
    exception when others then
      select coalesce(jsonb_agg(c.item) filter (where c.code is null), '[]'::jsonb),
             coalesce(jsonb_agg(jsonb_build_object(
               'stream', v_stream, 'index', c.i - 1, 'key', private.item_key(v_stream, c.item),
               'code', c.code, 'message', c.message)) filter (where c.code is not null),
               '[]'::jsonb)
        into v_good, v_stream_rejected
        from (select e.item, e.i, k.code, k.message
                from jsonb_array_elements(v_items) with ordinality as e(item, i)
               cross join lateral private.check_item(v_stream, e.item, v_system) as k) as c;
    end;
    v_rejected := v_rejected || v_stream_rejected;

    -- The good items, one statement per stream; of two versions of one key in the batch the
    -- newer is kept, and a stored row changes only for a newer version.
    case v_stream
      when 'task_summary' then
        -- A routed task's summary is written by the system holding (or last holding) its
        -- lease, over whatever another system wrote; anyone else's is kept as stale.
        with items as (
          select distinct on (x.task_id) x.*
            from jsonb_populate_recordset(null::private.task_summary_item, v_good) as x
           order by x.task_id, x.version desc
        ), judged as (
          select i.*, r.task_id is not null as routed,
                 coalesce(r.lease_owner = v_system, false) as holder
            from items i left join private.routed_tasks r on r.task_id = i.task_id
        ), stale as (
          insert into private.stale_attempts (task_id, system_id, call, payload)
          select j.task_id, v_system, 'summary', to_jsonb(j) - 'routed' - 'holder'
            from judged j where j.routed and not j.holder
        )
        insert into private.task_summaries as t (task_id, system_id, version, state, title,
          repo_url, profile, priority, attempts, max_attempts, cost_usd, input_tokens,
          output_tokens, created_at, updated_at)
        select j.task_id, v_system, j.version, j.state, j.title, j.repo_url, j.profile,
               coalesce(j.priority, 0), coalesce(j.attempts, 0), j.max_attempts, j.cost_usd,
               j.input_tokens, j.output_tokens, j.created_at, j.updated_at
          from judged j where not j.routed or j.holder
        on conflict (task_id) do update
           set system_id = excluded.system_id, version = excluded.version,
               state = excluded.state, title = excluded.title,
               repo_url = excluded.repo_url, profile = excluded.profile,
               priority = excluded.priority, attempts = excluded.attempts,
               max_attempts = excluded.max_attempts, cost_usd = excluded.cost_usd,
               input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
               created_at = excluded.created_at, updated_at = excluded.updated_at,
               received_at = now()
         where (t.system_id = excluded.system_id and t.version < excluded.version)
            or (t.system_id <> excluded.system_id
                and exists (select from private.routed_tasks r
                             where r.task_id = excluded.task_id
                               and r.lease_owner = excluded.system_id));
      when 'alert' then
        insert into private.alerts as a (alert_id, system_id, version, severity, kind, message,
          task_id, created_at, resolved_at)
        select distinct on (x.alert_id) x.alert_id, v_system, x.version, x.severity, x.kind,
               x.message, x.task_id, x.created_at, x.resolved_at
          from jsonb_populate_recordset(null::private.alert_item, v_good) as x
         order by x.alert_id, x.version desc
        on conflict (alert_id) do update
           set version = excluded.version, severity = excluded.severity, kind = excluded.kind,
               message = excluded.message, task_id = excluded.task_id,
               created_at = excluded.created_at, resolved_at = excluded.resolved_at,
               received_at = now()
         where a.version < excluded.version and a.system_id = excluded.system_id;
      when 'report' then
        -- A routed task's reports are the lease holder's: a late one of another system is
        -- kept as stale; the holder's first report moves those of attempts that lost the
        -- lease there too (their attempt numbers are another system's).
        insert into private.stale_attempts (task_id, system_id, call, payload)
        select x.task_id, v_system, 'report', to_jsonb(x)
          from jsonb_populate_recordset(null::private.report_item, v_good) as x
          join private.routed_tasks r on r.task_id = x.task_id
         where r.lease_owner is distinct from v_system;
        with replaced as (
          delete from private.reports o
           where o.system_id <> v_system
             and o.task_id in (
               select x.task_id
                 from jsonb_populate_recordset(null::private.report_item, v_good) as x
                 join private.routed_tasks r on r.task_id = x.task_id
                where r.lease_owner = v_system)
          returning o.*
        )
        insert into private.stale_attempts (task_id, system_id, call, payload)
        select o.task_id, o.system_id, 'report', to_jsonb(o) - 'system_id' from replaced o;
        insert into private.reports as r (task_id, attempt, system_id, version, verdict,
          summary, cost_usd, created_at)
        select distinct on (x.task_id, x.attempt) x.task_id, x.attempt, v_system, x.version,
               x.verdict, x.summary, x.cost_usd, x.created_at
          from jsonb_populate_recordset(null::private.report_item, v_good) as x
         where not exists (select from private.routed_tasks t
                            where t.task_id = x.task_id
                              and t.lease_owner is distinct from v_system)
         order by x.task_id, x.attempt, x.version desc
        on conflict (task_id, attempt) do update
           set version = excluded.version, verdict = excluded.verdict,
               summary = excluded.summary, cost_usd = excluded.cost_usd,
               created_at = excluded.created_at, received_at = now()
         where r.version < excluded.version and r.system_id = excluded.system_id;
      when 'health' then
        insert into private.health as h (system_id, window_start, window_len_s, version,
          metrics)
        select distinct on (x.window_start, x.window_len_s) v_system, x.window_start,
               x.window_len_s, x.version, x.metrics
          from jsonb_populate_recordset(null::private.health_item, v_good) as x
         order by x.window_start, x.window_len_s, x.version desc
        on conflict (system_id, window_start, window_len_s) do update
           set version = excluded.version, metrics = excluded.metrics, received_at = now()
         where h.version < excluded.version;
      else
        null;
    end case;
  end loop;

  -- Watermarks and gaps (S-14): a range starting past last_seq + 1 means seqs never arrived.
  for v_stream, v_range in select key, value from jsonb_each(v_ranges) loop
    if v_stream not in ('task_summary', 'alert', 'report', 'health') then
      raise exception 'ranges.%: unknown stream', v_stream using errcode = '22023';
    end if;
    begin
      v_lo := (v_range ->> 'seq_lo')::bigint;
      v_hi := (v_range ->> 'seq_hi')::bigint;
    exception when others then
      v_lo := null;
    end;
    if jsonb_typeof(v_range) <> 'object' or v_lo is null or v_hi is null or v_lo > v_hi then
      raise exception 'ranges.%: needs integers seq_lo <= seq_hi', v_stream
        using errcode = '22023';
    end if;
    select last_seq into v_last from private.sync_streams
     where system_id = v_system and stream = v_stream for update;
    if found and v_lo > v_last + 1 then
      insert into private.alerts (alert_id, system_id, version, origin, severity, kind, message,
                                  created_at)
      values (gen_random_uuid(), v_system, 1, 'central', 'warning', 'sync_gap',
              format('%s: seqs %s to %s never arrived (batch %s)', v_stream, v_last + 1,
                     v_lo - 1, v_batch_id),
              now());
    end if;
    insert into private.sync_streams as w (system_id, stream, last_seq)
    values (v_system, v_stream, v_hi)
    on conflict (system_id, stream) do update
       set last_seq = greatest(w.last_seq, excluded.last_seq), updated_at = now();
  end loop;

  update private.ingest_ledger
     set items = v_total, accepted = v_total - jsonb_array_length(v_rejected),
         rejected = jsonb_array_length(v_rejected)
   where system_id = v_system and batch_id = v_batch_id;
  return jsonb_build_object('batch_id', v_batch_id, 'status', 'applied',
                            'accepted', v_total - jsonb_array_length(v_rejected),
                            'rejected', v_rejected);
end
$$;

revoke execute on function private.ingest_batch_once(jsonb) from public, anon, authenticated;

-- api.heartbeat as in `..._routing.sql`; a listed lease the origin cancelled is revoked with
-- reason `cancelled`, one taken back by a new pin with `repinned`, each with the why in
-- `message`.
create or replace function api.heartbeat(p_status jsonb) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_set private.routing_settings;
  v_leases jsonb;
  v_held integer;
  v_renewed jsonb;
  v_revoked jsonb := '[]'::jsonb;
  v_offers integer := 0;
  v_repos text[];
  v_me record;
begin
  if jsonb_typeof(p_status) is distinct from 'object' then
    raise exception 'p_status must be a json object' using errcode = '22023';
  end if;
  v_leases := p_status -> 'leases';
  if v_leases is not null and jsonb_typeof(v_leases) <> 'array' then
    raise exception 'p_status.leases must be a json array' using errcode = '22023';
  end if;
  begin
    perform x.task_id, x.fencing_token
       from jsonb_to_recordset(coalesce(v_leases, '[]')) as x(task_id uuid, fencing_token bigint);
  exception when others then
    raise exception 'p_status.leases: each lease needs task_id (uuid) and fencing_token (integer)'
      using errcode = '22023';
  end;
  perform private.reap();
  select * into v_set from private.routing_settings;
  select count(*) into v_held from private.routed_tasks
   where lease_owner = v_system and state in ('leased', 'running');

  update private.systems
     set last_heartbeat_at = now(),
         running = coalesce((p_status ->> 'running')::integer, running),
         slots = coalesce((p_status ->> 'slots')::integer, slots),
         draining = coalesce((p_status ->> 'draining')::boolean, draining),
         sync_paused = coalesce((p_status ->> 'sync_paused')::boolean, sync_paused),
         priority = coalesce((p_status ->> 'priority')::integer, priority),
         local_running = greatest(0, coalesce((p_status ->> 'local_running')::integer,
                                              (p_status ->> 'running')::integer - v_held,
                                              local_running)),
         updated_at = now()
   where system_id = v_system;

  -- Renewal never waits: a lease locked by a reaper is being taken back (it is reported
  -- revoked), one locked by the caller's own completion is ending anyway.
  with mine as (
    select t.task_id
      from private.routed_tasks t
     where t.lease_owner = v_system and t.state in ('leased', 'running')
       and t.lease_expires_at >= now()
       and (v_leases is null
            or (t.task_id, t.fencing_token) in (
                 select x.task_id, x.fencing_token
                   from jsonb_to_recordset(v_leases) as x(task_id uuid, fencing_token bigint)))
       for update skip locked
  ), renewed as (
    update private.routed_tasks t
       set lease_expires_at = now() + make_interval(secs => v_set.lease_s), updated_at = now()
      from mine m
     where t.task_id = m.task_id
    returning t.task_id, t.fencing_token, t.lease_expires_at
  )
  select coalesce(jsonb_agg(jsonb_build_object('task_id', r.task_id, 'fencing_token',
                    r.fencing_token, 'lease_expires_at', r.lease_expires_at)
                  order by r.task_id), '[]'::jsonb)
    into v_renewed from renewed r;

  if v_leases is not null then
    select coalesce(jsonb_agg(jsonb_build_object(
             'task_id', x.task_id, 'fencing_token', x.fencing_token,
             'state', t.state,
             'reason', case when t.task_id is null then 'unknown_task'
                            when t.fencing_token = x.fencing_token
                                 and t.state in ('done', 'failed') then 'finished'
                            when t.fencing_token = x.fencing_token
                                 and t.state = 'cancelled' then 'cancelled'
                            when a.outcome = 'repinned' then 'repinned'
                            else 'lease_lost' end,
             'message', case when t.fencing_token = x.fencing_token
                                  and t.state = 'cancelled' then t.last_error
                             when a.outcome = 'repinned' then t.last_error end)
             order by x.task_id), '[]'::jsonb)
      into v_revoked
      from jsonb_to_recordset(v_leases) as x(task_id uuid, fencing_token bigint)
      left join private.routed_tasks t on t.task_id = x.task_id
      left join private.task_attempts a on a.fencing_token = x.fencing_token
     where t.task_id is null
        or not (t.lease_owner = v_system and t.fencing_token = x.fencing_token
                and t.state in ('leased', 'running') and t.lease_expires_at >= now());
  end if;

  select f.available, s.owner, s.draining or s.drain_requested as draining
    into v_me
    from private.systems s join private.fleet() f using (system_id)
   where s.system_id = v_system;
  if v_me.available then
    select coalesce(array_agg(distinct c.repo_url), '{}') into v_repos
      from private.contexts c where c.system_id = v_system;
    select count(*) into v_offers
      from (select from private.routed_tasks t
             where t.state = 'queued' and t.owner = v_me.owner and t.run_after <= now()
               and (t.pinned_system is null or t.pinned_system = v_system)
               and (t.repo_url is null or t.repo_url = any(v_repos))
             limit 100) w;
  end if;

  return jsonb_build_object('system_id', v_system, 'server_time', now(),
                            'lease_s', v_set.lease_s, 'heartbeat_s', v_set.heartbeat_s,
                            'draining', v_me.draining, 'leases', v_renewed,
                            'revoked', v_revoked, 'offers', v_offers);
end
$$;

-- A routed task as its origin sees it (`api.routed_status`): where it runs, its progress,
-- result, last error and attempts. The origin's cancel, retry and pin answer it too.
create function private.routed_view(p_task private.routed_tasks) returns jsonb
language sql stable
set search_path = ''
as $$
  select private.routed_task_json(p_task)
         || jsonb_build_object(
              'executing_system', p_task.lease_owner,
              'executing_name', (select s.name from private.systems s
                                  where s.system_id = p_task.lease_owner),
              'progress', p_task.progress, 'result', p_task.result,
              'last_error', p_task.last_error, 'run_after', p_task.run_after,
              'created_at', p_task.created_at, 'updated_at', p_task.updated_at,
              'attempts', (select coalesce(jsonb_agg(jsonb_build_object(
                              'attempt', a.attempt, 'system_id', a.system_id,
                              'system_name', s.name, 'fencing_token', a.fencing_token,
                              'claimed_at', a.claimed_at, 'ended_at', a.ended_at,
                              'outcome', a.outcome) order by a.attempt), '[]'::jsonb)
                             from private.task_attempts a
                             join private.systems s using (system_id)
                            where a.task_id = p_task.task_id))
$$;
revoke execute on function private.routed_view(private.routed_tasks) from public;

-- api.routed_status as in `..._routing.sql`, each task built by private.routed_view.
create or replace function api.routed_status(p_since timestamptz default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
begin
  return (select jsonb_build_object('server_time', now(), 'tasks',
                   coalesce(jsonb_agg(private.routed_view(t) order by t.updated_at, t.task_id),
                            '[]'::jsonb))
            from private.routed_tasks t
           where t.origin_system = v_system
             and (p_since is null or t.updated_at > p_since));
end
$$;

-- The routed task `p_task` locked, when the caller's owner owns it (42501 otherwise; 22023
-- when there is none).
create function private.owned_routed_task(p_system uuid, p_task uuid)
returns private.routed_tasks
language plpgsql
set search_path = ''
as $$
declare
  v_row private.routed_tasks;
begin
  if p_task is null then
    raise exception 'p_task_id is missing' using errcode = '22023';
  end if;
  select * into v_row from private.routed_tasks where task_id = p_task for update;
  if not found then
    raise exception 'unknown routed task %', p_task using errcode = '22023';
  end if;
  if v_row.owner is distinct from (select s.owner from private.systems s
                                    where s.system_id = p_system) then
    raise exception 'routed task % belongs to another owner', p_task using errcode = '42501';
  end if;
  return v_row;
end
$$;
revoke execute on function private.owned_routed_task(uuid, uuid) from public;

-- api.cancel_routed: cancels a routed task of the caller's owner (`ccm task cancel` on its
-- origin). A queued or blocked task is cancelled; a leased or running one too, and its lease
-- ends at once: the attempt ends `cancelled`, the holder's next heartbeat revokes the lease
-- with reason `cancelled` (its agent stops there) and its later progress or result is stale.
-- The holder stays `lease_owner`, so its summary of the cancelled task is the one shown.
-- A task already done, failed or cancelled is left as it is (status `unchanged`).
create function api.cancel_routed(p_task_id uuid, p_reason text default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_row private.routed_tasks;
begin
  v_row := private.owned_routed_task(v_system, p_task_id);
  if v_row.state in ('done', 'failed', 'cancelled') then
    return private.routed_view(v_row) || jsonb_build_object('status', 'unchanged');
  end if;
  update private.task_attempts set ended_at = now(), outcome = 'cancelled'
   where fencing_token = v_row.fencing_token and outcome is null
     and v_row.state in ('leased', 'running');
  update private.routed_tasks
     set state = 'cancelled', lease_expires_at = null, reason = null,
         last_error = format('cancelled by %s: %s',
                             (select s.name from private.systems s where s.system_id = v_system),
                             coalesce(nullif(btrim(p_reason), ''), 'no reason given')),
         updated_at = now()
   where task_id = p_task_id
  returning * into v_row;
  update private.alerts a set resolved_at = now(), version = a.version + 1
   where a.origin = 'central' and a.task_id = p_task_id and a.resolved_at is null
     and a.kind in ('unroutable', 'routed_task_blocked');
  return private.routed_view(v_row) || jsonb_build_object('status', 'applied');
end
$$;

-- api.retry_routed: queues a failed, blocked, flagged (done with verdict `issue`) or cancelled
-- routed task of the caller's owner again, with a fresh attempt budget (`ccm task retry` on
-- its origin); any other state is left as it is (status `unchanged`).
create function api.retry_routed(p_task_id uuid, p_reason text default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_row private.routed_tasks;
begin
  v_row := private.owned_routed_task(v_system, p_task_id);
  if not (v_row.state in ('failed', 'blocked', 'cancelled')
          or (v_row.state = 'done' and v_row.result ->> 'verdict' = 'issue')) then
    return private.routed_view(v_row) || jsonb_build_object('status', 'unchanged');
  end if;
  update private.routed_tasks
     set state = 'queued', lease_owner = null, lease_expires_at = null, run_after = now(),
         queued_since = now(), reason = null, unroutable_alerted_at = null, progress = null,
         result = null, attempt_budget = coalesce(attempt_budget, max_attempts),
         max_attempts = attempts + coalesce(attempt_budget, max_attempts),
         last_error = format('retried by %s: %s',
                             (select s.name from private.systems s where s.system_id = v_system),
                             coalesce(nullif(btrim(p_reason), ''), 'no reason given')),
         updated_at = now()
   where task_id = p_task_id
  returning * into v_row;
  return private.routed_view(v_row) || jsonb_build_object('status', 'applied');
end
$$;

-- api.pin_routed: pins a routed task of the caller's owner to `p_system` (a name or id of a
-- system of the same owner; null or '' unpins). A leased or running task whose holder is not
-- the new pin is queued again: its attempt ends `repinned`, the holder's next heartbeat
-- revokes the lease with reason `repinned`, and the move spends no attempt.
create function api.pin_routed(p_task_id uuid, p_system text default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_row private.routed_tasks;
  v_pin uuid;
begin
  v_row := private.owned_routed_task(v_system, p_task_id);
  if coalesce(btrim(p_system), '') <> '' then
    v_pin := private.sibling_system(v_system, btrim(p_system));
  end if;
  if v_row.state in ('leased', 'running') and v_pin is not null
     and v_row.lease_owner is distinct from v_pin then
    update private.task_attempts set ended_at = now(), outcome = 'repinned'
     where fencing_token = v_row.fencing_token and outcome is null;
    update private.routed_tasks
       set state = 'queued', pinned_system = v_pin, lease_owner = null,
           lease_expires_at = null, run_after = now(), queued_since = now(),
           attempt_budget = coalesce(attempt_budget, max_attempts),
           max_attempts = max_attempts + 1, progress = null,
           last_error = format('moved to %s by %s',
                               (select s.name from private.systems s where s.system_id = v_pin),
                               (select s.name from private.systems s
                                 where s.system_id = v_system)),
           updated_at = now()
     where task_id = p_task_id
    returning * into v_row;
  else
    update private.routed_tasks
       set pinned_system = v_pin, reason = null, unroutable_alerted_at = null,
           updated_at = now()
     where task_id = p_task_id
    returning * into v_row;
  end if;
  return private.routed_view(v_row) || jsonb_build_object('status', 'applied');
end
$$;

revoke execute on all functions in schema api from public, anon;
grant execute on all functions in schema api to authenticated;

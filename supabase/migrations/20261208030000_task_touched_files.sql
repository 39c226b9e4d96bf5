-- Conflict prediction across systems (issue 23; the node's `conflicts` module).
--
-- Each system ships the files its active tasks touched in their task summaries
-- (`touched_files`, at most 200 paths a task, relative to the repository), and asks
-- `api.fleet_task_files` for the active tasks of the same repositories on the other systems of
-- its owner, so a task on another machine is part of its prediction.

alter table private.task_summaries add column touched_files text[] not null default '{}'
  check (cardinality(touched_files) <= 200);
alter type private.task_summary_item add attribute touched_files text[];

-- A complete task's landing (issue 23): each summary carries its land state (`land_queued`,
-- `landing`, `merged`, `moved`, `landed`, `land_failed`; none before the task entered a land
-- queue), shown by `api.fleet_tasks`; a landed task is no longer active for the prediction.
-- An enum rather than a check: an item with an unknown state fails its cast, so it alone is
-- refused naming the field (`private.check_items`), not the whole batch at its insert.
create type private.land_state as enum
  ('land_queued', 'landing', 'merged', 'moved', 'landed', 'land_failed');
alter table private.task_summaries add column land_state private.land_state;
alter type private.task_summary_item add attribute land_state private.land_state;

-- The body of `api.ingest_batch` as in `..._routed_lease_ownership.sql`, storing the summary's
-- `touched_files` (cut to its first 200, so an item is never refused for it) and `land_state` too.
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
          output_tokens, created_at, updated_at, touched_files, land_state)
        select j.task_id, v_system, j.version, j.state, j.title, j.repo_url, j.profile,
               coalesce(j.priority, 0), coalesce(j.attempts, 0), j.max_attempts, j.cost_usd,
               j.input_tokens, j.output_tokens, j.created_at, j.updated_at,
               coalesce(j.touched_files[1:200], '{}'), j.land_state
          from judged j where not j.routed or j.holder
        on conflict (task_id) do update
           set system_id = excluded.system_id, version = excluded.version,
               state = excluded.state, title = excluded.title,
               repo_url = excluded.repo_url, profile = excluded.profile,
               priority = excluded.priority, attempts = excluded.attempts,
               max_attempts = excluded.max_attempts, cost_usd = excluded.cost_usd,
               input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
               created_at = excluded.created_at, updated_at = excluded.updated_at,
               touched_files = excluded.touched_files, land_state = excluded.land_state,
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

-- The tasks of the other systems of the caller's owner that are active (running, or finished
-- and not landed) in the repositories `p_repo_urls` (a JSON array of normalized URLs) and
-- touched something: `[{task_id, system_name, state, title, repo_url, touched_files}]`.
create function api.fleet_task_files(p_repo_urls jsonb) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
begin
  if jsonb_typeof(p_repo_urls) is distinct from 'array' then
    raise exception 'p_repo_urls: must be a json array of repository urls'
      using errcode = '22023';
  end if;
  return (
    select coalesce(jsonb_agg(jsonb_build_object(
             'task_id', t.task_id, 'system_name', s.name, 'state', t.state, 'title', t.title,
             'repo_url', t.repo_url, 'touched_files', to_jsonb(t.touched_files))
             order by t.repo_url, t.created_at, t.task_id), '[]'::jsonb)
      from private.task_summaries t
      join private.systems s using (system_id)
     where s.owner = (select c.owner from private.systems c where c.system_id = v_system)
       and t.system_id <> v_system
       and s.state <> 'revoked'
       and t.repo_url in (select jsonb_array_elements_text(p_repo_urls))
       and t.state not in ('created', 'failed', 'cancelled')
       and t.land_state is distinct from 'landed'
       and cardinality(t.touched_files) > 0);
end
$$;
revoke execute on function api.fleet_task_files(jsonb) from public, anon;
grant execute on function api.fleet_task_files(jsonb) to authenticated;

-- The fleet's tasks, with what each touched and where its landing is.
create or replace view api.fleet_tasks with (security_invoker = true) as
select t.task_id, t.system_id, s.name as system_name, t.state, t.title, t.repo_url, t.profile,
       t.priority, t.attempts, t.max_attempts, t.cost_usd, t.version, t.created_at,
       t.updated_at, t.touched_files, t.land_state
  from private.task_summaries t
  join private.systems s using (system_id);

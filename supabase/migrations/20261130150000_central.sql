-- ccm's central schema: the fleet's summaries, shipped by each node's sync engine.
--
-- Tables live in `private` (not exposed over REST); the REST surface is schema `api`: SECURITY
-- DEFINER functions with an empty search_path (execute for `authenticated` only) and
-- security-invoker views for operators. Every function resolves its caller from `auth.uid()`;
-- a caller never names its own system. Row-level security is on for every table as a second
-- wall (and for the table editor). The wire contract is in supabase/README.md.

create schema if not exists private;
create schema if not exists api;
revoke all on schema private, api from public;
grant usage on schema private, api to authenticated, service_role;

-- One row per system (one Supabase Auth user each).
create table private.systems (
  system_id uuid primary key default gen_random_uuid(),
  auth_uid uuid not null unique,
  owner uuid not null,
  name text not null,
  slots integer not null default 0 check (slots >= 0),
  version text,
  state text not null default 'active' check (state in ('active', 'revoked')),
  running integer not null default 0,
  draining boolean not null default false,
  contexts_generation bigint not null default 0,
  enrolled_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  last_heartbeat_at timestamptz
);
create index systems_owner on private.systems (owner);

-- The checkouts a system can work in, replaced as a whole set per generation.
create table private.contexts (
  system_id uuid not null references private.systems on delete cascade,
  repo_url text not null,
  path text not null,
  default_branch text,
  head_sha text,
  updated_at timestamptz,
  generation bigint not null,
  primary key (system_id, repo_url, path)
);
create index contexts_repo_url on private.contexts (repo_url);

create table private.task_summaries (
  task_id uuid primary key,
  system_id uuid not null references private.systems on delete cascade,
  version bigint not null check (version >= 1),
  state text not null check (state in ('created', 'queued', 'executing', 'report_generation',
    'supervisory', 'complete', 'alert', 'error', 'retry', 'failed', 'blocked', 'waiting_quota',
    'cancelled')),
  title text not null,
  repo_url text,
  profile text,
  priority integer not null default 0,
  attempts integer not null default 0,
  max_attempts integer,
  cost_usd numeric,
  input_tokens bigint,
  output_tokens bigint,
  created_at timestamptz not null,
  updated_at timestamptz not null,
  received_at timestamptz not null default now()
);
create index task_summaries_system_state on private.task_summaries (system_id, state);

-- Alerts from the nodes (`origin` node) and raised here (`origin` central, e.g. `sync_gap`).
create table private.alerts (
  alert_id uuid primary key,
  system_id uuid not null references private.systems on delete cascade,
  version bigint not null check (version >= 1),
  origin text not null default 'node' check (origin in ('node', 'central')),
  severity text not null check (severity in ('info', 'warning', 'critical')),
  kind text not null,
  message text not null,
  task_id uuid,
  created_at timestamptz not null,
  resolved_at timestamptz,
  received_at timestamptz not null default now()
);
create index alerts_system_open on private.alerts (system_id) where resolved_at is null;

create table private.reports (
  task_id uuid not null,
  attempt integer not null check (attempt >= 1),
  system_id uuid not null references private.systems on delete cascade,
  version bigint not null check (version >= 1),
  verdict text check (verdict in ('ok', 'issue')),
  summary text,
  cost_usd numeric,
  created_at timestamptz not null,
  received_at timestamptz not null default now(),
  primary key (task_id, attempt)
);
create index reports_system on private.reports (system_id);

-- Health rollups: one row per system and window.
create table private.health (
  system_id uuid not null references private.systems on delete cascade,
  window_start timestamptz not null,
  window_len_s integer not null check (window_len_s > 0),
  version bigint not null check (version >= 1),
  metrics jsonb not null check (jsonb_typeof(metrics) = 'object'),
  received_at timestamptz not null default now(),
  primary key (system_id, window_start, window_len_s)
);

-- Every batch applied, written in the transaction that applies it (a replay is a duplicate).
create table private.ingest_ledger (
  system_id uuid not null references private.systems on delete cascade,
  batch_id uuid not null,
  lane text check (lane in ('urgent', 'normal')),
  received_at timestamptz not null default now(),
  items integer not null default 0,
  accepted integer not null default 0,
  rejected integer not null default 0,
  primary key (system_id, batch_id)
);

-- Per system and stream, the highest outbox seq received (gap detection).
create table private.sync_streams (
  system_id uuid not null references private.systems on delete cascade,
  stream text not null check (stream in ('task_summary', 'alert', 'report', 'health')),
  last_seq bigint not null,
  updated_at timestamptz not null default now(),
  primary key (system_id, stream)
);

-- Row-level security. A system reads and writes its own rows; an operator
-- (app_metadata.role = 'operator') reads the rows of the systems they own; `anon` has no grant
-- at all. Writes normally go through the api functions (which run as the owner); the insert
-- and update policies keep direct writes (PostgREST upserts, S-17) to the caller's own rows.

alter table private.systems enable row level security;
create policy systems_read on private.systems for select to authenticated using (
  auth_uid = (select auth.uid())
  or (owner = (select auth.uid())
      and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator')
);

do $$
declare
  v_table text;
begin
  foreach v_table in array array['contexts', 'task_summaries', 'alerts', 'reports', 'health',
                                 'ingest_ledger', 'sync_streams']
  loop
    execute format('alter table private.%I enable row level security', v_table);
    execute format($p$
      create policy %I on private.%I for select to authenticated using (
        system_id in (
          select s.system_id from private.systems s
           where s.auth_uid = (select auth.uid())
              or (s.owner = (select auth.uid())
                  and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator')))
    $p$, v_table || '_read', v_table);
  end loop;
  foreach v_table in array array['contexts', 'task_summaries', 'alerts', 'reports', 'health']
  loop
    execute format($p$
      create policy %I on private.%I for insert to authenticated with check (
        system_id in (select s.system_id from private.systems s
                       where s.auth_uid = (select auth.uid()) and s.state = 'active'))
    $p$, v_table || '_insert_own', v_table);
    execute format($p$
      create policy %I on private.%I for update to authenticated
      using (system_id in (select s.system_id from private.systems s
                            where s.auth_uid = (select auth.uid()) and s.state = 'active'))
      with check (system_id in (select s.system_id from private.systems s
                                 where s.auth_uid = (select auth.uid()) and s.state = 'active'))
    $p$, v_table || '_update_own', v_table);
  end loop;
end
$$;

grant select on all tables in schema private to authenticated;
grant insert, update on private.contexts, private.task_summaries, private.alerts,
  private.reports, private.health to authenticated;
grant all on all tables in schema private to service_role;

-- The calling system, or 42501 when the caller is not an enrolled, active system (S-15).
create function private.caller_system() returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  v_system uuid;
begin
  select s.system_id into v_system
    from private.systems s
   where s.auth_uid = (select auth.uid()) and s.state <> 'revoked';
  if v_system is null then
    raise exception 'system not enrolled' using errcode = '42501';
  end if;
  return v_system;
end
$$;

-- Ingest item shapes: each item is cast to its type alone, so a bad item is found and named
-- before the set-based insert of the good ones.
create type private.task_summary_item as (
  task_id uuid, version bigint, state text, title text, repo_url text, profile text,
  priority integer, attempts integer, max_attempts integer, cost_usd numeric,
  input_tokens bigint, output_tokens bigint, created_at timestamptz, updated_at timestamptz
);
create type private.alert_item as (
  alert_id uuid, version bigint, severity text, kind text, message text, task_id uuid,
  created_at timestamptz, resolved_at timestamptz
);
create type private.report_item as (
  task_id uuid, attempt integer, version bigint, verdict text, summary text, cost_usd numeric,
  created_at timestamptz
);
create type private.health_item as (
  window_start timestamptz, window_len_s integer, version bigint, metrics jsonb
);

-- Why `p_item` does not fit `p_type` (one of the item types above), naming the field; null
-- when it fits. Only called for items whose cast already failed.
create function private.field_error(p_item jsonb, p_type regtype) returns text
language plpgsql stable
set search_path = ''
as $$
declare
  v_field record;
begin
  for v_field in
    select a.attname as name, format_type(a.atttypid, a.atttypmod) as type
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type t on t.typrelid = a.attrelid
     where t.oid = p_type and a.attnum > 0 and not a.attisdropped
     order by a.attnum
  loop
    begin
      execute format('select jsonb_populate_record(null::%s, $1)', p_type)
        using jsonb_build_object(v_field.name, p_item -> v_field.name);
    exception when others then
      return v_field.name || ': ' || sqlerrm;
    end;
  end loop;
  return null;
end
$$;

-- Whether a good item names a row or a task of another system than `p_system`.
create function private.foreign_item(p_stream text, p_item jsonb, p_system uuid) returns boolean
language sql stable
set search_path = ''
as $$
  select case p_stream
    when 'task_summary' then exists (
      select from private.task_summaries t
       where t.task_id = (p_item ->> 'task_id')::uuid and t.system_id <> p_system)
    when 'alert' then exists (
      select from private.alerts a
       where a.alert_id = (p_item ->> 'alert_id')::uuid and a.system_id <> p_system)
      or exists (
      select from private.task_summaries t
       where t.task_id = (p_item ->> 'task_id')::uuid and t.system_id <> p_system)
    when 'report' then exists (
      select from private.reports r
       where r.task_id = (p_item ->> 'task_id')::uuid
         and r.attempt = (p_item ->> 'attempt')::integer and r.system_id <> p_system)
      or exists (
      select from private.task_summaries t
       where t.task_id = (p_item ->> 'task_id')::uuid and t.system_id <> p_system)
    else false
  end
$$;

-- The error of one ingest item of system `p_system` as (code, message), both null when the
-- item is good: a value of the wrong type (22P02 and friends), a missing key (23502), a bad
-- enum value or a version below 1 (23514), a row or task of another system (42501).
create function private.check_item(p_stream text, p_item jsonb, p_system uuid,
                                   out code text, out message text)
language plpgsql stable
set search_path = ''
as $$
declare
  v_ts private.task_summary_item;
  v_alert private.alert_item;
  v_report private.report_item;
  v_health private.health_item;
  v_missing text;
  v_version bigint;
begin
  if jsonb_typeof(p_item) is distinct from 'object' then
    code := '22023';
    message := 'item is not a json object';
    return;
  end if;
  begin
    case p_stream
      when 'task_summary' then
        v_ts := jsonb_populate_record(null::private.task_summary_item, p_item);
        v_version := v_ts.version;
        v_missing := case
          when v_ts.task_id is null then 'task_id'
          when v_ts.version is null then 'version'
          when v_ts.state is null then 'state'
          when v_ts.title is null then 'title'
          when v_ts.created_at is null then 'created_at'
          when v_ts.updated_at is null then 'updated_at'
        end;
        if v_missing is null and v_ts.state not in ('created', 'queued', 'executing',
            'report_generation', 'supervisory', 'complete', 'alert', 'error', 'retry', 'failed',
            'blocked', 'waiting_quota', 'cancelled') then
          code := '23514';
          message := format('state: unknown task state %L', v_ts.state);
          return;
        end if;
      when 'alert' then
        v_alert := jsonb_populate_record(null::private.alert_item, p_item);
        v_version := v_alert.version;
        v_missing := case
          when v_alert.alert_id is null then 'alert_id'
          when v_alert.version is null then 'version'
          when v_alert.severity is null then 'severity'
          when v_alert.kind is null then 'kind'
          when v_alert.message is null then 'message'
          when v_alert.created_at is null then 'created_at'
        end;
        if v_missing is null and v_alert.severity not in ('info', 'warning', 'critical') then
          code := '23514';
          message := format('severity: must be info, warning or critical, not %L',
                            v_alert.severity);
          return;
        end if;
      when 'report' then
        v_report := jsonb_populate_record(null::private.report_item, p_item);
        v_version := v_report.version;
        v_missing := case
          when v_report.task_id is null then 'task_id'
          when v_report.attempt is null then 'attempt'
          when v_report.version is null then 'version'
          when v_report.created_at is null then 'created_at'
        end;
        if v_missing is null and v_report.verdict not in ('ok', 'issue') then
          code := '23514';
          message := format('verdict: must be ok, issue or null, not %L', v_report.verdict);
          return;
        end if;
        if v_missing is null and v_report.attempt < 1 then
          code := '23514';
          message := 'attempt: must be 1 or more';
          return;
        end if;
      when 'health' then
        v_health := jsonb_populate_record(null::private.health_item, p_item);
        v_version := v_health.version;
        v_missing := case
          when v_health.window_start is null then 'window_start'
          when v_health.window_len_s is null then 'window_len_s'
          when v_health.version is null then 'version'
          when v_health.metrics is null then 'metrics'
        end;
        if v_missing is null and jsonb_typeof(v_health.metrics) <> 'object' then
          code := '22023';
          message := 'metrics: must be a json object';
          return;
        end if;
        if v_missing is null and v_health.window_len_s < 1 then
          code := '23514';
          message := 'window_len_s: must be 1 or more';
          return;
        end if;
      else
        code := '22023';
        message := format('unknown stream %L', p_stream);
        return;
    end case;
  exception when others then
    code := sqlstate;
    message := coalesce(private.field_error(p_item, ('private.' || p_stream || '_item')::regtype),
                        sqlerrm);
    return;
  end;
  if v_missing is not null then
    code := '23502';
    message := v_missing || ': is missing';
  elsif v_version < 1 then
    code := '23514';
    message := 'version: must be 1 or more';
  elsif private.foreign_item(p_stream, p_item, p_system) then
    code := '42501';
    message := 'the task or row belongs to another system';
  end if;
end
$$;

-- The natural key of an item as the node wrote it, to name a rejected item.
create function private.item_key(p_stream text, p_item jsonb) returns text
language sql immutable
set search_path = ''
as $$
  select case p_stream
    when 'task_summary' then p_item ->> 'task_id'
    when 'alert' then p_item ->> 'alert_id'
    when 'report' then (p_item ->> 'task_id') || ':' || (p_item ->> 'attempt')
    when 'health' then (p_item ->> 'window_start') || '/' || (p_item ->> 'window_len_s')
  end
  where jsonb_typeof(p_item) = 'object'
$$;

revoke execute on all functions in schema private from public;

-- api.enroll: creates or updates the caller's system row; the owner comes from the JWT's
-- app_metadata, which only the project's secret key can write.
create function api.enroll(p_name text, p_slots integer, p_version text) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_uid uuid := (select auth.uid());
  v_meta jsonb := coalesce((select auth.jwt()) -> 'app_metadata', '{}'::jsonb);
  v_owner uuid;
  v_row private.systems;
begin
  if v_uid is null then
    raise exception 'no authenticated user' using errcode = '42501';
  end if;
  if (v_meta ->> 'role') is distinct from 'system' then
    raise exception 'enroll needs a system identity (app_metadata.role = system)'
      using errcode = '42501';
  end if;
  begin
    v_owner := (v_meta ->> 'owner')::uuid;
  exception when invalid_text_representation then
    v_owner := null;
  end;
  if v_owner is null then
    raise exception 'app_metadata.owner is missing or not a uuid' using errcode = '42501';
  end if;
  if p_name is null or btrim(p_name) = '' then
    raise exception 'p_name is missing' using errcode = '22023';
  end if;
  if p_slots is null or p_slots < 0 then
    raise exception 'p_slots must be 0 or more' using errcode = '22023';
  end if;
  insert into private.systems as s (auth_uid, owner, name, slots, version)
  values (v_uid, v_owner, p_name, p_slots, p_version)
  on conflict (auth_uid) do update
     set owner = excluded.owner, name = excluded.name, slots = excluded.slots,
         version = excluded.version, updated_at = now()
   where s.state <> 'revoked'
  returning * into v_row;
  if v_row.system_id is null then
    raise exception 'system revoked' using errcode = '42501';
  end if;
  return jsonb_build_object('system_id', v_row.system_id, 'name', v_row.name,
                            'owner', v_row.owner);
end
$$;

-- api.heartbeat: presence and load of the caller.
create function api.heartbeat(p_status jsonb) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
begin
  if jsonb_typeof(p_status) is distinct from 'object' then
    raise exception 'p_status must be a json object' using errcode = '22023';
  end if;
  update private.systems
     set last_heartbeat_at = now(),
         running = coalesce((p_status ->> 'running')::integer, running),
         slots = coalesce((p_status ->> 'slots')::integer, slots),
         draining = coalesce((p_status ->> 'draining')::boolean, draining),
         updated_at = now()
   where system_id = v_system;
  return jsonb_build_object('system_id', v_system, 'server_time', now());
end
$$;

-- api.register_contexts: replaces the caller's whole set of contexts when the generation is
-- newer than the stored one; otherwise changes nothing.
create function api.register_contexts(p_generation bigint, p_contexts jsonb) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_stored bigint;
  v_bad integer;
begin
  if p_generation is null then
    raise exception 'p_generation is missing' using errcode = '22023';
  end if;
  if jsonb_typeof(p_contexts) is distinct from 'array' then
    raise exception 'p_contexts must be a json array' using errcode = '22023';
  end if;
  select contexts_generation into v_stored
    from private.systems where system_id = v_system for update;
  if p_generation <= v_stored then
    return jsonb_build_object('status', 'stale', 'generation', v_stored);
  end if;
  select min(e.i) into v_bad
    from jsonb_array_elements(p_contexts) with ordinality as e(item, i)
   where jsonb_typeof(e.item) <> 'object'
      or coalesce(e.item ->> 'repo_url', '') = '' or coalesce(e.item ->> 'path', '') = '';
  if v_bad is not null then
    raise exception 'p_contexts[%]: needs repo_url and path', v_bad - 1 using errcode = '22023';
  end if;
  delete from private.contexts where system_id = v_system;
  insert into private.contexts (system_id, repo_url, path, default_branch, head_sha,
                                updated_at, generation)
  select distinct on (x.repo_url, x.path)
         v_system, x.repo_url, x.path, x.default_branch, x.head_sha, x.updated_at, p_generation
    from jsonb_to_recordset(p_contexts)
         as x(repo_url text, path text, default_branch text, head_sha text,
              updated_at timestamptz);
  update private.systems set contexts_generation = p_generation, updated_at = now()
   where system_id = v_system;
  return jsonb_build_object('status', 'applied', 'generation', p_generation);
end
$$;

-- api.ingest_batch: one batch of the caller's outbox, in one transaction. The ledger row comes
-- first (a replay answers `duplicate`); each item is checked alone and the good ones of a
-- stream are applied by one statement, "insert, or update only when the version is newer";
-- bad items are listed in the answer; per-stream seq ranges advance the watermark and a hole
-- raises a central `sync_gap` alert.
create function api.ingest_batch(p_batch jsonb) returns jsonb
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

    -- Each item alone: the good ones go on, the bad ones are named.
    select coalesce(jsonb_agg(c.item) filter (where c.code is null), '[]'::jsonb),
           coalesce(jsonb_agg(jsonb_build_object(
             'stream', v_stream, 'index', c.i - 1, 'key', private.item_key(v_stream, c.item),
             'code', c.code, 'message', c.message)) filter (where c.code is not null), '[]'::jsonb)
      into v_good, v_stream_rejected
      from (select e.item, e.i, k.code, k.message
              from jsonb_array_elements(v_items) with ordinality as e(item, i)
             cross join lateral private.check_item(v_stream, e.item, v_system) as k) as c;
    v_rejected := v_rejected || v_stream_rejected;

    -- The good items, one statement per stream; of two versions of one key in the batch the
    -- newer is kept, and a stored row changes only for a newer version.
    case v_stream
      when 'task_summary' then
        insert into private.task_summaries as t (task_id, system_id, version, state, title,
          repo_url, profile, priority, attempts, max_attempts, cost_usd, input_tokens,
          output_tokens, created_at, updated_at)
        select distinct on (x.task_id) x.task_id, v_system, x.version, x.state, x.title,
               x.repo_url, x.profile, coalesce(x.priority, 0), coalesce(x.attempts, 0),
               x.max_attempts, x.cost_usd, x.input_tokens, x.output_tokens, x.created_at,
               x.updated_at
          from jsonb_populate_recordset(null::private.task_summary_item, v_good) as x
         order by x.task_id, x.version desc
        on conflict (task_id) do update
           set version = excluded.version, state = excluded.state, title = excluded.title,
               repo_url = excluded.repo_url, profile = excluded.profile,
               priority = excluded.priority, attempts = excluded.attempts,
               max_attempts = excluded.max_attempts, cost_usd = excluded.cost_usd,
               input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
               created_at = excluded.created_at, updated_at = excluded.updated_at,
               received_at = now()
         where t.version < excluded.version and t.system_id = excluded.system_id;
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
        insert into private.reports as r (task_id, attempt, system_id, version, verdict,
          summary, cost_usd, created_at)
        select distinct on (x.task_id, x.attempt) x.task_id, x.attempt, v_system, x.version,
               x.verdict, x.summary, x.cost_usd, x.created_at
          from jsonb_populate_recordset(null::private.report_item, v_good) as x
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

revoke execute on all functions in schema api from public, anon;
grant execute on all functions in schema api to authenticated;

-- Views for operators and the table editor. They run with the caller's rights
-- (security_invoker), so row-level security decides what each caller sees.

create view api.fleet_systems with (security_invoker = true) as
select s.system_id, s.name, s.owner, s.version, s.state, s.slots, s.running, s.draining,
       s.last_heartbeat_at,
       case when s.state = 'active' and s.last_heartbeat_at >= now() - interval '45 seconds'
            then 'online' else 'offline' end as presence,
       case when s.state = 'revoked' then 'revoked'
            when s.last_heartbeat_at is null then 'never_seen'
            when s.last_heartbeat_at < now() - interval '45 seconds' then 'stale_heartbeat'
            else 'online' end as presence_reason,
       s.enrolled_at
  from private.systems s;

create view api.fleet_tasks with (security_invoker = true) as
select t.task_id, t.system_id, s.name as system_name, t.state, t.title, t.repo_url, t.profile,
       t.priority, t.attempts, t.max_attempts, t.cost_usd, t.version, t.created_at,
       t.updated_at
  from private.task_summaries t
  join private.systems s using (system_id);

create view api.tasks_by_state with (security_invoker = true) as
select t.state, t.system_id, s.name as system_name, count(*) as tasks
  from private.task_summaries t
  join private.systems s using (system_id)
 group by t.state, t.system_id, s.name;

create view api.open_alerts with (security_invoker = true) as
select a.alert_id, a.system_id, s.name as system_name, a.severity, a.kind, a.message,
       a.task_id, a.origin, a.created_at
  from private.alerts a
  join private.systems s using (system_id)
 where a.resolved_at is null;

create view api.daily_cost with (security_invoker = true) as
select t.system_id, s.name as system_name,
       (t.updated_at at time zone 'utc')::date as day,
       count(*) as tasks, coalesce(sum(t.cost_usd), 0) as cost_usd,
       coalesce(sum(t.input_tokens), 0) as input_tokens,
       coalesce(sum(t.output_tokens), 0) as output_tokens
  from private.task_summaries t
  join private.systems s using (system_id)
 group by t.system_id, s.name, (t.updated_at at time zone 'utc')::date;

grant select on api.fleet_systems, api.fleet_tasks, api.tasks_by_state, api.open_alerts,
  api.daily_cost to authenticated;

-- Whatever default privileges a project has (Supabase grants `anon` a lot in `public`), `anon`
-- gets nothing here.
revoke all on all tables in schema private, api from anon;

-- Context-aware routing (SPEC section 9; sync-routing.md 4.3, R-1 to R-11): a task created on a
-- system without its repository is queued here and claimed by exactly one system that holds
-- the repository, under a lease renewed by that system's heartbeat and guarded by a fencing
-- token; a system silent for the lease time loses its leases and the task is routed again.
--
-- Same shape as the central migration: tables in `private` with row-level security, the REST
-- surface in `api` (SECURITY DEFINER functions with an empty search_path, security-invoker
-- views). The wire contract is in supabase/README.md, section "Routing".

-- Settings of this deployment: one row, changed by the project owner (the tests shorten the
-- times). `last_reap_at` throttles the reaper's slower pass.
create table private.routing_settings (
  id boolean primary key default true check (id),
  lease_s integer not null default 90 check (lease_s > 0),
  heartbeat_s integer not null default 15 check (heartbeat_s > 0),
  stale_after_s integer not null default 45 check (stale_after_s > 0),
  offer_s integer not null default 10 check (offer_s >= 0),
  reap_interval_s integer not null default 5 check (reap_interval_s >= 0),
  backoff_base_s numeric not null default 5 check (backoff_base_s >= 0),
  backoff_cap_s numeric not null default 300 check (backoff_cap_s >= 0),
  max_attempts integer not null default 3 check (max_attempts >= 1),
  unroutable_alert_s integer not null default 300 check (unroutable_alert_s >= 0),
  last_reap_at timestamptz not null default '-infinity'
);
insert into private.routing_settings default values;

-- Routing state of a system: a manual priority (higher wins), the central drain switch
-- (api.drain; the node's own `draining` comes with its heartbeat), whether its sync is paused,
-- and the agents it runs for local tasks (not routed leases).
alter table private.systems
  add column priority integer not null default 0,
  add column drain_requested boolean not null default false,
  add column sync_paused boolean not null default false,
  add column local_running integer not null default 0 check (local_running >= 0);

create sequence private.fencing_seq;

-- The routed task queue. `idempotency_key` is unique per origin: a replayed submit returns
-- the same task. `lease_owner` is the system holding the lease, and stays on a finished task
-- (the system that ran it); a task queued again has none.
create table private.routed_tasks (
  task_id uuid primary key default gen_random_uuid(),
  origin_system uuid not null references private.systems on delete cascade,
  -- The origin's owner: a task is routed only among the systems of one owner.
  owner uuid not null,
  idempotency_key text not null,
  repo_url text,
  pinned_system uuid references private.systems,
  title text not null,
  prompt text not null default '',
  profile text,
  verify text,
  payload jsonb not null default '{}' check (jsonb_typeof(payload) = 'object'),
  priority integer not null default 0,
  state text not null default 'queued'
    check (state in ('queued', 'leased', 'running', 'done', 'failed', 'blocked')),
  attempts integer not null default 0 check (attempts >= 0),
  max_attempts integer not null check (max_attempts >= 1),
  run_after timestamptz not null default now(),
  queued_since timestamptz not null default now(),
  reason text check (reason in ('no_context', 'all_busy', 'all_stale')),
  unroutable_alerted_at timestamptz,
  lease_owner uuid references private.systems on delete set null,
  lease_expires_at timestamptz,
  fencing_token bigint,
  progress jsonb,
  result jsonb,
  last_error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (origin_system, idempotency_key),
  check ((state in ('leased', 'running')) = (lease_expires_at is not null))
);
-- The claim's scan: queued tasks in claim order.
create index routed_tasks_queue
  on private.routed_tasks (owner, priority desc, queued_since, task_id)
  where state = 'queued';
-- The reaper's scan and a system's held leases.
create index routed_tasks_leases on private.routed_tasks (lease_expires_at)
  where state in ('leased', 'running');
create index routed_tasks_holder on private.routed_tasks (lease_owner)
  where state in ('leased', 'running');

-- One row per claim: a retry is a new attempt, never an overwrite.
create table private.task_attempts (
  task_id uuid not null references private.routed_tasks on delete cascade,
  attempt integer not null check (attempt >= 1),
  system_id uuid not null references private.systems on delete cascade,
  fencing_token bigint not null unique,
  claimed_at timestamptz not null default now(),
  ended_at timestamptz,
  outcome text check (outcome in ('done', 'failed', 'released', 'lease_lost')),
  primary key (task_id, attempt)
);
create index task_attempts_system on private.task_attempts (system_id);

-- Writes that carried a fencing token which no longer held the lease: kept, never applied.
create table private.stale_attempts (
  id bigint generated always as identity primary key,
  task_id uuid not null references private.routed_tasks on delete cascade,
  system_id uuid not null references private.systems on delete cascade,
  fencing_token bigint,
  call text not null check (call in ('progress', 'complete', 'release')),
  payload jsonb,
  received_at timestamptz not null default now()
);
create index stale_attempts_task on private.stale_attempts (task_id);

-- Row-level security: a system sees the tasks it originated or holds, their attempts and
-- stale writes; an operator those of their systems; settings are readable by every
-- authenticated caller; anon nothing. All writes go through the api functions.
alter table private.routing_settings enable row level security;
create policy routing_settings_read on private.routing_settings for select to authenticated
  using (true);

alter table private.routed_tasks enable row level security;
create policy routed_tasks_read on private.routed_tasks for select to authenticated using (
  exists (
    select from private.systems s
     where s.system_id in (routed_tasks.origin_system, routed_tasks.lease_owner)
       and (s.auth_uid = (select auth.uid())
            or (s.owner = (select auth.uid())
                and ((select auth.jwt()) -> 'app_metadata' ->> 'role') = 'operator')))
);

alter table private.task_attempts enable row level security;
create policy task_attempts_read on private.task_attempts for select to authenticated using (
  task_id in (select r.task_id from private.routed_tasks r)
);

alter table private.stale_attempts enable row level security;
create policy stale_attempts_read on private.stale_attempts for select to authenticated using (
  task_id in (select r.task_id from private.routed_tasks r)
);

grant select on private.routing_settings, private.routed_tasks, private.task_attempts,
  private.stale_attempts to authenticated;
grant all on private.routing_settings, private.routed_tasks, private.task_attempts,
  private.stale_attempts to service_role;
grant usage on sequence private.fencing_seq to service_role;

-- R-1: one spelling per repository, the same rules as the node's `schema/src/repo_url.rs`:
-- `git@github.com:org/app.git` and `ssh://git@GitHub.com:22/org/app` are
-- `https://github.com/org/app`; local paths and file:// URLs are only trimmed.
create function private.normalize_repo_url(p_url text) returns text
language plpgsql immutable
set search_path = ''
as $$
declare
  v_url text := regexp_replace(p_url, '^\s+|\s+$', '', 'g');
  v_scheme text;
  v_rest text;
  v_authority text;
  v_path text;
  v_host text;
begin
  if v_url is null then
    return null;
  end if;
  if position('://' in v_url) > 0 then
    v_scheme := split_part(v_url, '://', 1);
    if lower(v_scheme) = 'file' then
      return v_url;
    end if;
    v_rest := substr(v_url, length(v_scheme) + 4);
    if position('/' in v_rest) > 0 then
      v_authority := substr(v_rest, 1, position('/' in v_rest) - 1);
      v_path := substr(v_rest, position('/' in v_rest) + 1);
    else
      v_authority := v_rest;
      v_path := '';
    end if;
  elsif position(':' in v_url) > 0 then
    v_authority := substr(v_url, 1, position(':' in v_url) - 1);
    v_path := substr(v_url, position(':' in v_url) + 1);
    if v_authority = '' or position('/' in v_authority) > 0 or left(v_path, 2) = '//' then
      return v_url;
    end if;
  else
    return v_url;
  end if;
  v_host := lower(split_part(regexp_replace(v_authority, '^.*@', ''), ':', 1));
  v_path := btrim(v_path, '/');
  if right(v_path, 4) = '.git' then
    v_path := left(v_path, -4);
  end if;
  return 'https://' || v_host || '/' || v_path;
end
$$;

-- Every active system with what routing needs: held leases, free slots, whether it can take
-- work now (`available`: heartbeat fresh, sync not paused, not draining, a free slot) and
-- its score terms. One call per statement, never per task.
create function private.fleet()
returns table (system_id uuid, owner uuid, priority integer, fresh boolean, available boolean,
               held bigint, free integer, load double precision, hb_fresh double precision)
language sql stable
set search_path = ''
as $$
  select s.system_id, s.owner, s.priority, f.fresh,
         f.fresh and not s.sync_paused and not (s.draining or s.drain_requested)
           and s.slots - s.local_running - h.n > 0,
         h.n, greatest(s.slots - s.local_running - h.n, 0)::integer,
         case when s.slots > 0
              then greatest(s.slots - s.local_running - h.n, 0)::double precision / s.slots
              else 0 end,
         coalesce(greatest(0, 1 - extract(epoch from now() - s.last_heartbeat_at)
                                  / g.stale_after_s), 0)
    from private.systems s
   cross join private.routing_settings g
   cross join lateral (select count(*) as n from private.routed_tasks r
                        where r.lease_owner = s.system_id
                          and r.state in ('leased', 'running')) h
   cross join lateral (select coalesce(s.last_heartbeat_at
                                       >= now() - make_interval(secs => g.stale_after_s), false)
                              as fresh) f
   where s.state = 'active'
$$;

-- The reaper (R-8). Always: leases past their expiry go back to the queue with a backoff
-- (full jitter, base * 2^(attempt-1) capped), or to `blocked` with a central alert at
-- max_attempts; each as an attempt ended `lease_lost`. At most every reap_interval_s (or when
-- forced): the reason of every queued task no system can take, an alert for tasks unroutable
-- for longer than unroutable_alert_s, resolved once the task can be routed. Runs inside claim
-- and heartbeat, and under pg_cron where the extension exists. Returns what it did.
create function private.reap(p_force boolean default false) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_set private.routing_settings;
  v_requeued integer;
  v_blocked integer;
  v_reasons integer := 0;
  v_alerts integer := 0;
begin
  select * into v_set from private.routing_settings;

  with expired as (
    select r.task_id, r.fencing_token
      from private.routed_tasks r
     where r.state in ('leased', 'running') and r.lease_expires_at < now()
     for update skip locked
  ), moved as (
    update private.routed_tasks r
       set state = case when r.attempts >= r.max_attempts then 'blocked' else 'queued' end,
           run_after = now() + make_interval(secs => (random()
             * least(v_set.backoff_cap_s,
                     v_set.backoff_base_s * power(2, greatest(r.attempts - 1, 0))))::float8),
           queued_since = now(), lease_owner = null, lease_expires_at = null, reason = null,
           unroutable_alerted_at = null,
           last_error = format('lease lost: system silent past its lease (attempt %s)',
                               r.attempts),
           updated_at = now()
      from expired e
     where r.task_id = e.task_id
    returning r.task_id, r.state, r.origin_system, r.title, r.attempts, e.fencing_token
  ), ended as (
    update private.task_attempts a set ended_at = now(), outcome = 'lease_lost'
      from moved m
     where a.fencing_token = m.fencing_token
  ), alerted as (
    insert into private.alerts (alert_id, system_id, version, origin, severity, kind, message,
                                task_id, created_at)
    select gen_random_uuid(), m.origin_system, 1, 'central', 'critical', 'routed_task_blocked',
           format('routed task %L blocked after %s attempts: every lease was lost', m.title,
                  m.attempts),
           m.task_id, now()
      from moved m where m.state = 'blocked'
  )
  select count(*) filter (where state = 'queued'), count(*) filter (where state = 'blocked')
    into v_requeued, v_blocked from moved;

  if p_force or v_set.last_reap_at < now() - make_interval(secs => v_set.reap_interval_s) then
    -- One caller at a time does the slower pass; the others skip it.
    perform from private.routing_settings
     where last_reap_at = v_set.last_reap_at for update skip locked;
    if found then
      update private.routing_settings set last_reap_at = now();

      with fleet as materialized (
        select * from private.fleet()
      ), routes as (
        select k.owner, k.repo_url, k.pinned_system,
               case when bool_or(f.available) then null
                    when bool_or(f.fresh) then 'all_busy'
                    when count(f.system_id) > 0 then 'all_stale'
                    else 'no_context' end as reason
          from (select distinct q.owner, q.repo_url, q.pinned_system
                  from private.routed_tasks q where q.state = 'queued') k
          left join fleet f
            on f.owner = k.owner
           and (k.pinned_system is null or f.system_id = k.pinned_system)
           and (k.repo_url is null
                or exists (select from private.contexts c
                            where c.system_id = f.system_id and c.repo_url = k.repo_url))
         group by k.owner, k.repo_url, k.pinned_system
      )
      -- `all_busy` is cleared by the claim, not here: a busy fleet would otherwise flip every
      -- queued task of a repository between null and all_busy on each pass.
      update private.routed_tasks t
         set reason = r.reason, updated_at = now()
        from routes r
       where t.state = 'queued' and t.owner = r.owner
         and t.repo_url is not distinct from r.repo_url
         and t.pinned_system is not distinct from r.pinned_system
         and t.reason is distinct from r.reason
         and (r.reason is not null or t.reason <> 'all_busy');
      get diagnostics v_reasons = row_count;

      with due as (
        update private.routed_tasks t
           set unroutable_alerted_at = now()
         where t.state = 'queued' and t.reason is not null and t.unroutable_alerted_at is null
           and t.queued_since <= now() - make_interval(secs => v_set.unroutable_alert_s)
        returning t.task_id, t.origin_system, t.title, t.reason, t.repo_url, t.queued_since
      )
      insert into private.alerts (alert_id, system_id, version, origin, severity, kind,
                                  message, task_id, created_at)
      select gen_random_uuid(), d.origin_system, 1, 'central', 'warning', 'unroutable',
             format('routed task %L waits since %s: %s (repo %s)', d.title, d.queued_since,
                    d.reason, coalesce(d.repo_url, 'none')),
             d.task_id, now()
        from due d;
      get diagnostics v_alerts = row_count;

      -- A task routed after all resolves its unroutable alert.
      update private.alerts a
         set resolved_at = now(), version = a.version + 1
        from private.routed_tasks t
       where a.origin = 'central' and a.kind = 'unroutable' and a.resolved_at is null
         and t.task_id = a.task_id and (t.state <> 'queued' or t.reason is null);
    end if;
  end if;
  return jsonb_build_object('requeued', v_requeued, 'blocked', v_blocked,
                            'reasons', v_reasons, 'alerts', v_alerts);
end
$$;

-- A system of the caller's owner named `p_system` (its name or its id); 22023 when none or
-- several match.
create function private.sibling_system(p_caller uuid, p_system text) returns uuid
language plpgsql stable
set search_path = ''
as $$
declare
  v_ids uuid[];
begin
  select array_agg(s.system_id) into v_ids
    from private.systems s
    join private.systems me on me.system_id = p_caller and me.owner = s.owner
   where s.name = p_system or s.system_id::text = lower(p_system);
  if v_ids is null then
    raise exception 'unknown system %', p_system using errcode = '22023';
  end if;
  if cardinality(v_ids) > 1 then
    raise exception 'system name % is ambiguous (% systems); name it by id', p_system,
      cardinality(v_ids) using errcode = '22023';
  end if;
  return v_ids[1];
end
$$;

-- The routed task as the node needs it to run the task.
create function private.routed_task_json(p_task private.routed_tasks) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'task_id', p_task.task_id, 'idempotency_key', p_task.idempotency_key,
    'origin_system', p_task.origin_system,
    'origin_name', (select s.name from private.systems s
                     where s.system_id = p_task.origin_system),
    'repo_url', p_task.repo_url, 'pinned_system', p_task.pinned_system,
    'title', p_task.title, 'prompt', p_task.prompt, 'profile', p_task.profile,
    'verify', p_task.verify, 'payload', p_task.payload, 'priority', p_task.priority,
    'state', p_task.state, 'attempt', p_task.attempts, 'max_attempts', p_task.max_attempts,
    'fencing_token', p_task.fencing_token, 'lease_expires_at', p_task.lease_expires_at,
    'reason', p_task.reason, 'queued_since', p_task.queued_since)
$$;

-- Records a write that carried a stale fencing token, and the answer to it.
create function private.stale_write(p_task uuid, p_system uuid, p_token bigint, p_call text,
                                    p_payload jsonb) returns jsonb
language sql
set search_path = ''
as $$
  insert into private.stale_attempts (task_id, system_id, fencing_token, call, payload)
  values (p_task, p_system, p_token, p_call, p_payload);
  select jsonb_build_object('task_id', p_task, 'status', 'stale_lease', 'state', r.state,
                            'fencing_token', p_token)
    from private.routed_tasks r where r.task_id = p_task;
$$;

revoke execute on all functions in schema private from public;

-- R-2 with R-1: the contexts are stored with their repository URL normalized, so they meet
-- the tasks' (same function as the central migration otherwise).
create or replace function api.register_contexts(p_generation bigint, p_contexts jsonb)
returns jsonb
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
  select distinct on (n.repo_url, x.path)
         v_system, n.repo_url, x.path, x.default_branch, x.head_sha, x.updated_at, p_generation
    from jsonb_to_recordset(p_contexts)
         as x(repo_url text, path text, default_branch text, head_sha text,
              updated_at timestamptz)
   cross join lateral (select private.normalize_repo_url(x.repo_url) as repo_url) n;
  update private.systems set contexts_generation = p_generation, updated_at = now()
   where system_id = v_system;
  return jsonb_build_object('status', 'applied', 'generation', p_generation);
end
$$;

-- api.submit_task: queues a routed task of the caller (its origin). Idempotent by
-- (origin, idempotency_key): a replay returns the stored task, whatever else it carries.
create function api.submit_task(p_task jsonb) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_key text;
  v_pin uuid;
  v_row private.routed_tasks;
  v_task_id uuid;
  v_priority integer;
  v_max integer;
  v_payload jsonb;
begin
  if jsonb_typeof(p_task) is distinct from 'object' then
    raise exception 'p_task must be a json object' using errcode = '22023';
  end if;
  v_key := p_task ->> 'idempotency_key';
  if coalesce(btrim(v_key), '') = '' then
    raise exception 'idempotency_key is missing' using errcode = '22023';
  end if;
  select * into v_row from private.routed_tasks
   where origin_system = v_system and idempotency_key = v_key;
  if found then
    return private.routed_task_json(v_row) || jsonb_build_object('status', 'duplicate');
  end if;

  if coalesce(btrim(p_task ->> 'title'), '') = '' then
    raise exception 'title is missing' using errcode = '22023';
  end if;
  begin
    v_task_id := coalesce((p_task ->> 'task_id')::uuid, gen_random_uuid());
  exception when invalid_text_representation then
    raise exception 'task_id is not a uuid: %', p_task ->> 'task_id' using errcode = '22023';
  end;
  begin
    v_priority := coalesce((p_task ->> 'priority')::integer, 0);
    v_max := coalesce((p_task ->> 'max_attempts')::integer,
                      (select max_attempts from private.routing_settings));
  exception when invalid_text_representation or numeric_value_out_of_range then
    raise exception 'priority and max_attempts must be integers' using errcode = '22023';
  end;
  if v_max < 1 then
    raise exception 'max_attempts must be 1 or more' using errcode = '22023';
  end if;
  v_payload := coalesce(p_task -> 'payload', '{}'::jsonb);
  if jsonb_typeof(v_payload) <> 'object' then
    raise exception 'payload must be a json object' using errcode = '22023';
  end if;
  if coalesce(p_task ->> 'pin', '') <> '' then
    v_pin := private.sibling_system(v_system, p_task ->> 'pin');
  end if;

  insert into private.routed_tasks as r (task_id, origin_system, owner, idempotency_key,
    repo_url, pinned_system, title, prompt, profile, verify, payload, priority, max_attempts)
  values (v_task_id, v_system, (select s.owner from private.systems s where s.system_id = v_system),
          v_key,
          private.normalize_repo_url(nullif(btrim(p_task ->> 'repo_url'), '')), v_pin,
          p_task ->> 'title', coalesce(p_task ->> 'prompt', ''), p_task ->> 'profile',
          p_task ->> 'verify', v_payload, v_priority, v_max)
  on conflict (origin_system, idempotency_key) do nothing
  returning * into v_row;
  if v_row.task_id is null then
    -- A concurrent replay of the same key won the race: answer its task.
    select * into v_row from private.routed_tasks
     where origin_system = v_system and idempotency_key = v_key;
    return private.routed_task_json(v_row) || jsonb_build_object('status', 'duplicate');
  end if;

  -- The reason is visible at once when no system can take the task.
  select case when bool_or(f.available) then null
              when bool_or(f.fresh) then 'all_busy'
              when count(f.system_id) > 0 then 'all_stale'
              else 'no_context' end
    into v_row.reason
    from private.fleet() f
   where f.owner = v_row.owner
     and (v_row.pinned_system is null or f.system_id = v_row.pinned_system)
     and (v_row.repo_url is null
          or exists (select from private.contexts c
                      where c.system_id = f.system_id and c.repo_url = v_row.repo_url));
  if v_row.reason is not null then
    update private.routed_tasks set reason = v_row.reason where task_id = v_row.task_id;
  end if;
  return private.routed_task_json(v_row) || jsonb_build_object('status', 'queued');
exception
  when unique_violation then
    raise exception 'task_id % already exists', v_task_id using errcode = '23505';
end
$$;

-- api.claim: up to p_max queued tasks for the caller, in one statement (R-6). Hard filter:
-- the caller is available (heartbeat fresh, sync not paused, not draining, free slots), holds
-- the task's repository, matches its pin. Among the available systems that could take a task
-- the best one gets it first (manual priority, then load + 0.1 heartbeat freshness + 0.1
-- context freshness, then system id); a task queued for longer than offer_s goes to any
-- eligible claimer. Each claim is a lease with a new fencing token.
create function api.claim(p_max integer) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_set private.routing_settings;
  v_me record;
  v_repos text[];
  v_first text[];
  v_first_any boolean;
  v_claimed jsonb;
begin
  if p_max is null or p_max < 1 or p_max > 100 then
    raise exception 'p_max must be between 1 and 100' using errcode = '22023';
  end if;
  perform private.reap();
  select * into v_set from private.routing_settings;
  select s.owner, s.draining or s.drain_requested as draining, s.sync_paused, f.fresh, f.free
    into v_me
    from private.systems s join private.fleet() f using (system_id)
   where s.system_id = v_system;
  if not v_me.fresh or v_me.sync_paused or v_me.draining or v_me.free < 1 then
    return jsonb_build_object(
      'claimed', '[]'::jsonb, 'free_slots', v_me.free, 'lease_s', v_set.lease_s,
      'reason', case when not v_me.fresh then 'stale_heartbeat'
                     when v_me.sync_paused then 'sync_paused'
                     when v_me.draining then 'draining'
                     else 'no_free_slot' end);
  end if;

  select coalesce(array_agg(distinct c.repo_url), '{}') into v_repos
    from private.contexts c where c.system_id = v_system;

  -- The repositories (and, as null, the tasks without one) for which the caller is the best
  -- available system: during the offer window only the best system takes a task.
  with fleet as materialized (
    select * from private.fleet() f where f.available and f.owner = v_me.owner
  ), ranked as (
    select r.repo_url, f.system_id,
           row_number() over (
             partition by r.repo_url
             order by f.priority desc,
                      f.load + 0.1 * f.hb_fresh
                        + 0.1 * greatest(0, 1 - coalesce(extract(epoch from now() - c.at), 86400)
                                                / 86400) desc,
                      f.system_id) as rank
      from (select unnest(v_repos) as repo_url union all select null) r
     cross join fleet f
     cross join lateral (select count(*) as n, max(x.updated_at) as at from private.contexts x
                          where x.system_id = f.system_id and x.repo_url = r.repo_url) c
     where r.repo_url is null or c.n > 0
  )
  select coalesce(array_agg(k.repo_url) filter (where k.repo_url is not null), '{}'),
         coalesce(bool_or(k.repo_url is null), false)
    into v_first, v_first_any
    from ranked k where k.rank = 1 and k.system_id = v_system;

  -- The claim: one statement, no per-task subquery.
  with picked as materialized (
    select t.task_id
      from private.routed_tasks t
     where t.state = 'queued' and t.owner = v_me.owner
       and t.run_after <= now()
       and (t.pinned_system is null or t.pinned_system = v_system)
       and (t.repo_url is null or t.repo_url = any(v_repos))
       and (t.pinned_system = v_system
            or t.queued_since <= now() - make_interval(secs => v_set.offer_s)
            or (t.repo_url is null and v_first_any)
            or t.repo_url = any(v_first))
     order by t.priority desc, t.queued_since, t.task_id
     limit least(p_max, v_me.free)
     for update of t skip locked
  ), claimed as (
    update private.routed_tasks t
       set state = 'leased', lease_owner = v_system, attempts = t.attempts + 1,
           lease_expires_at = now() + make_interval(secs => v_set.lease_s),
           fencing_token = nextval('private.fencing_seq'), reason = null,
           unroutable_alerted_at = null, progress = null, updated_at = now()
      from picked p
     where t.task_id = p.task_id
    returning t.*
  ), attempts as (
    insert into private.task_attempts (task_id, attempt, system_id, fencing_token)
    select c.task_id, c.attempts, v_system, c.fencing_token from claimed c
  )
  select coalesce(jsonb_agg(private.routed_task_json(row(c.*)::private.routed_tasks)
                            order by c.priority desc, c.queued_since, c.task_id), '[]'::jsonb)
    into v_claimed
    from claimed c;
  return jsonb_build_object('claimed', v_claimed,
                            'free_slots', v_me.free - jsonb_array_length(v_claimed),
                            'lease_s', v_set.lease_s, 'reason', null);
end
$$;

-- api.heartbeat: presence and load of the caller, and in the same request the renewal of its
-- leases (those it lists in p_status.leases with their token, or all it holds when it lists
-- none), the leases it lists that it no longer holds (`revoked`), and how much work waits.
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
                            else 'lease_lost' end)
             order by x.task_id), '[]'::jsonb)
      into v_revoked
      from jsonb_to_recordset(v_leases) as x(task_id uuid, fencing_token bigint)
      left join private.routed_tasks t on t.task_id = x.task_id
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

-- The caller's current lease on `p_task` with token `p_token`, locked; null when it does not
-- hold it (any more).
create function private.held_lease(p_system uuid, p_task uuid, p_token bigint)
returns private.routed_tasks
language plpgsql
set search_path = ''
as $$
declare
  v_row private.routed_tasks;
begin
  if p_task is null or p_token is null then
    raise exception 'p_task_id and p_fencing_token are required' using errcode = '22023';
  end if;
  select * into v_row from private.routed_tasks where task_id = p_task for update;
  if not found then
    raise exception 'unknown task %', p_task using errcode = '22023';
  end if;
  if v_row.lease_owner = p_system and v_row.fencing_token = p_token
     and v_row.state in ('leased', 'running') then
    return v_row;
  end if;
  return null;
end
$$;
revoke execute on function private.held_lease(uuid, uuid, bigint) from public;

-- api.report_progress: progress of a held lease (the task is then `running`); a stale token
-- is recorded and answered `stale_lease`.
create function api.report_progress(p_task_id uuid, p_fencing_token bigint, p_progress jsonb)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_row private.routed_tasks;
begin
  if jsonb_typeof(p_progress) is distinct from 'object' then
    raise exception 'p_progress must be a json object' using errcode = '22023';
  end if;
  v_row := private.held_lease(v_system, p_task_id, p_fencing_token);
  if v_row.task_id is null then
    return private.stale_write(p_task_id, v_system, p_fencing_token, 'progress', p_progress);
  end if;
  update private.routed_tasks
     set state = 'running', progress = p_progress, updated_at = now()
   where task_id = p_task_id;
  return jsonb_build_object('task_id', p_task_id, 'status', 'applied', 'state', 'running',
                            'fencing_token', p_fencing_token);
end
$$;

-- api.complete: the result of a held lease, `done` or `failed`. The same token again after
-- it applied answers `duplicate` and changes nothing; any other stale token is recorded and
-- answered `stale_lease`.
create function api.complete(p_task_id uuid, p_fencing_token bigint, p_result jsonb)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_row private.routed_tasks;
  v_state text;
begin
  if jsonb_typeof(p_result) is distinct from 'object' then
    raise exception 'p_result must be a json object' using errcode = '22023';
  end if;
  v_state := p_result ->> 'status';
  if v_state is null or v_state not in ('done', 'failed') then
    raise exception 'p_result.status must be done or failed' using errcode = '22023';
  end if;
  v_row := private.held_lease(v_system, p_task_id, p_fencing_token);
  if v_row.task_id is null then
    select * into v_row from private.routed_tasks where task_id = p_task_id;
    if v_row.state in ('done', 'failed') and v_row.lease_owner = v_system
       and v_row.fencing_token = p_fencing_token then
      return jsonb_build_object('task_id', p_task_id, 'status', 'duplicate',
                                'state', v_row.state, 'fencing_token', p_fencing_token);
    end if;
    return private.stale_write(p_task_id, v_system, p_fencing_token, 'complete', p_result);
  end if;
  update private.routed_tasks
     set state = v_state, result = p_result, lease_expires_at = null, updated_at = now()
   where task_id = p_task_id;
  update private.task_attempts set ended_at = now(), outcome = v_state
   where fencing_token = p_fencing_token;
  return jsonb_build_object('task_id', p_task_id, 'status', 'applied', 'state', v_state,
                            'fencing_token', p_fencing_token);
end
$$;

-- api.release: gives a held lease back (the task is queued again at once; the attempt counts,
-- so at max_attempts it is blocked with an alert).
create function api.release(p_task_id uuid, p_fencing_token bigint, p_reason text)
returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_row private.routed_tasks;
  v_state text;
begin
  v_row := private.held_lease(v_system, p_task_id, p_fencing_token);
  if v_row.task_id is null then
    return private.stale_write(p_task_id, v_system, p_fencing_token, 'release',
                               jsonb_build_object('reason', p_reason));
  end if;
  v_state := case when v_row.attempts >= v_row.max_attempts then 'blocked' else 'queued' end;
  update private.routed_tasks
     set state = v_state, lease_owner = null, lease_expires_at = null, run_after = now(),
         queued_since = now(),
         last_error = format('released by its system: %s', coalesce(p_reason, 'no reason')),
         updated_at = now()
   where task_id = p_task_id;
  update private.task_attempts set ended_at = now(), outcome = 'released'
   where fencing_token = p_fencing_token;
  if v_state = 'blocked' then
    insert into private.alerts (alert_id, system_id, version, origin, severity, kind, message,
                                task_id, created_at)
    values (gen_random_uuid(), v_row.origin_system, 1, 'central', 'critical',
            'routed_task_blocked',
            format('routed task %L blocked after %s attempts: released (%s)', v_row.title,
                   v_row.attempts, coalesce(p_reason, 'no reason')),
            p_task_id, now());
  end if;
  return jsonb_build_object('task_id', p_task_id, 'status', 'applied', 'state', v_state,
                            'fencing_token', p_fencing_token);
end
$$;

-- api.drain: the central drain switch of the caller, or of another system of the same owner
-- (`ccm systems drain NAME`): a draining system finishes its work and takes no new work.
create function api.drain(p_on boolean, p_system text default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_target uuid;
  v_row private.systems;
begin
  if p_on is null then
    raise exception 'p_on is missing' using errcode = '22023';
  end if;
  v_target := case when p_system is null then v_system
                   else private.sibling_system(v_system, p_system) end;
  update private.systems set drain_requested = p_on, updated_at = now()
   where system_id = v_target
  returning * into v_row;
  return jsonb_build_object('system_id', v_row.system_id, 'name', v_row.name,
                            'draining', v_row.draining or v_row.drain_requested);
end
$$;

-- Presence of every system with a reason, never a bare "offline" (SPEC section 9); read by
-- operators over REST and, for a node's `ccm systems`, through api.list_systems.
create view api.systems with (security_invoker = true) as
select s.system_id, s.name, s.owner,
       case when s.state = 'active' and not s.sync_paused
                 and s.last_heartbeat_at >= now() - make_interval(secs => g.stale_after_s)
            then 'online' else 'offline' end as presence,
       case when s.state = 'revoked' then 'not_enrolled'
            when s.sync_paused then 'sync_paused'
            when s.last_heartbeat_at is null
                 or s.last_heartbeat_at < now() - make_interval(secs => g.stale_after_s)
              then 'stale_heartbeat'
            when s.draining or s.drain_requested then 'draining'
            end as reason,
       s.slots, s.local_running + h.n as slots_used, h.n as routed_leases,
       s.draining or s.drain_requested as draining, s.priority,
       coalesce((select array_agg(distinct c.repo_url order by c.repo_url)
                   from private.contexts c where c.system_id = s.system_id),
                '{}') as repos,
       s.last_heartbeat_at,
       (select coalesce(sum(t.cost_usd), 0) from private.task_summaries t
         where t.system_id = s.system_id
           and t.updated_at >= date_trunc('day', now() at time zone 'utc') at time zone 'utc')
         as cost_today
  from private.systems s
 cross join private.routing_settings g
 cross join lateral (select count(*) as n from private.routed_tasks r
                      where r.lease_owner = s.system_id
                        and r.state in ('leased', 'running')) h;

-- Routed tasks for the table editor and the origin's merged view. The names of systems the
-- caller may not read (RLS) are null; an operator reads all of theirs.
create view api.routed_tasks with (security_invoker = true) as
select t.task_id, t.title, t.state, t.reason, t.repo_url, t.origin_system,
       o.name as origin_name, t.pinned_system, p.name as pinned_name,
       t.lease_owner as executing_system, e.name as executing_name, t.attempts,
       t.max_attempts, t.fencing_token, t.lease_expires_at, t.run_after, t.queued_since,
       t.priority, t.profile, t.progress, t.result, t.last_error, t.created_at, t.updated_at
  from private.routed_tasks t
  left join private.systems o on o.system_id = t.origin_system
  left join private.systems p on p.system_id = t.pinned_system
  left join private.systems e on e.system_id = t.lease_owner;

-- api.list_systems: the presence rows of every system of the caller's owner (RLS shows a
-- system only itself; `ccm systems` on a node lists its fleet).
create function api.list_systems() returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
begin
  return (select coalesce(jsonb_agg(to_jsonb(v) - 'owner' order by v.name, v.system_id),
                          '[]'::jsonb)
            from api.systems v
           where v.owner = (select s.owner from private.systems s where s.system_id = v_system));
end
$$;

-- api.routed_status: the caller's routed tasks (those it originated) changed since `p_since`
-- (all when null), with where they run, their progress, result and attempts: the origin's
-- merged view (`ccm task list`, `ccm task show`). Names of the other systems are included
-- (RLS hides their rows from a system).
create function api.routed_status(p_since timestamptz default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_answer jsonb;
begin
  select jsonb_build_object('server_time', now(), 'tasks', coalesce(jsonb_agg(
           private.routed_task_json(t)
           || jsonb_build_object(
                'executing_system', t.lease_owner,
                'executing_name', (select s.name from private.systems s
                                    where s.system_id = t.lease_owner),
                'progress', t.progress, 'result', t.result, 'last_error', t.last_error,
                'run_after', t.run_after, 'created_at', t.created_at,
                'updated_at', t.updated_at,
                'attempts', (select coalesce(jsonb_agg(jsonb_build_object(
                                'attempt', a.attempt, 'system_id', a.system_id,
                                'system_name', s.name, 'fencing_token', a.fencing_token,
                                'claimed_at', a.claimed_at, 'ended_at', a.ended_at,
                                'outcome', a.outcome) order by a.attempt), '[]'::jsonb)
                               from private.task_attempts a
                               join private.systems s using (system_id)
                              where a.task_id = t.task_id))
           order by t.updated_at, t.task_id), '[]'::jsonb))
    into v_answer
    from private.routed_tasks t
   where t.origin_system = v_system
     and (p_since is null or t.updated_at > p_since);
  return v_answer;
end
$$;

grant select on api.systems, api.routed_tasks to authenticated;
revoke execute on all functions in schema api from public, anon;
grant execute on all functions in schema api to authenticated;
revoke all on all tables in schema private, api from anon;

-- The reaper under pg_cron, where the extension is installed (Supabase: enable it, then run
-- this migration or the statement below); inside claim and heartbeat it runs regardless.
do $$
begin
  if exists (select from pg_extension where extname = 'pg_cron') then
    execute $c$select cron.schedule('ccm-routing-reaper', '15 seconds',
                                    'select private.reap(true)')$c$;
  end if;
end
$$;

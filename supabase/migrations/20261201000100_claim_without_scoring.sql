-- A faster api.claim (T14: claims per second with 20 concurrent claimers). Its answers are
-- the same as before; what changed is the work per call, which no longer grows with the fleet's
-- leases and the queue's length:
-- - the caller's own terms (fresh, free slots) are read for the caller alone, not for every
--   system through private.fleet();
-- - the fleet is scored only while some queued task of the owner is inside its offer window
--   (`routing_settings.offer_s`); past it the score decides nothing, so a backlog is claimed
--   without it. An index on (owner, queued_since) of the queue answers that question at once.

create index routed_tasks_recent on private.routed_tasks (owner, queued_since)
  where state = 'queued';

create or replace function api.claim(p_max integer) returns jsonb
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
  -- The caller's own terms, as private.fleet() computes them, without the rest of the fleet.
  select s.owner, s.draining or s.drain_requested as draining, s.sync_paused,
         coalesce(s.last_heartbeat_at >= now() - make_interval(secs => v_set.stale_after_s),
                  false) as fresh,
         greatest(s.slots - s.local_running - h.n, 0)::integer as free
    into v_me
    from private.systems s
   cross join lateral (select count(*) as n from private.routed_tasks r
                        where r.lease_owner = s.system_id
                          and r.state in ('leased', 'running')) h
   where s.system_id = v_system and s.state = 'active';
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

  -- The ranking matters only while some queued task is inside its offer window: past it, any
  -- eligible claimer may take a task, so a backlog is claimed without scoring the fleet.
  v_first := '{}';
  v_first_any := false;
  if exists (select from private.routed_tasks t
              where t.state = 'queued' and t.owner = v_me.owner
                and t.queued_since > now() - make_interval(secs => v_set.offer_s)) then
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
  end if;

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

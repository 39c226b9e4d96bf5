-- The digest of a fleet manager (a supervisor with scope `fleet`, issue 25): what the systems
-- of the caller's owner look like from here, which no node sees alone (the views show a
-- system only its own rows). Read by the holder of the manager's named lease.
--
-- Answer: {"systems": [{name, presence, running, slots, draining, last_heartbeat_at}],
--          "tasks_by_state": [{system, state, tasks, changed}] (`changed`: updated since p_since),
--          "open_alerts": [{system, severity, kind, message, created_at}] (newest 50),
--          "routed_tasks": [{title, state, reason, origin, executing, attempts}] (not done, 50),
--          "cost_by_day": [{system, day, tasks, cost_usd}] (the last 2 UTC days)}.
-- Errors: 42501 (not enrolled, revoked).
create function api.fleet_digest(p_since timestamptz default null) returns jsonb
language plpgsql security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
  v_since timestamptz := coalesce(p_since, '-infinity'::timestamptz);
begin
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  return jsonb_build_object(
    'systems', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'name', s.name,
               'presence', case when s.state = 'active'
                                 and s.last_heartbeat_at >= now() - interval '45 seconds'
                            then 'online' else 'offline' end,
               'running', s.running, 'slots', s.slots, 'draining', s.draining,
               'last_heartbeat_at', s.last_heartbeat_at) order by s.name), '[]'::jsonb)
        from private.systems s
       where s.owner = v_owner and s.state = 'active'),
    'tasks_by_state', (
      select coalesce(jsonb_agg(jsonb_build_object('system', g.name, 'state', g.state,
                                                   'tasks', g.tasks, 'changed', g.changed)
                                order by g.name, g.state), '[]'::jsonb)
        from (select s.name, t.state, count(*) as tasks,
                     count(*) filter (where t.updated_at >= v_since) as changed
                from private.task_summaries t
                join private.systems s using (system_id)
               where s.owner = v_owner
               group by s.name, t.state) g),
    'open_alerts', (
      select coalesce(jsonb_agg(jsonb_build_object('system', a.name, 'severity', a.severity,
                                                   'kind', a.kind, 'message', a.message,
                                                   'created_at', a.created_at)
                                order by a.created_at desc), '[]'::jsonb)
        from (select s.name, a.severity, a.kind, a.message, a.created_at
                from private.alerts a
                join private.systems s using (system_id)
               where s.owner = v_owner and a.resolved_at is null
               order by a.created_at desc
               limit 50) a),
    'routed_tasks', (
      select coalesce(jsonb_agg(jsonb_build_object('title', r.title, 'state', r.state,
                                                   'reason', r.reason, 'origin', r.origin,
                                                   'executing', r.executing,
                                                   'attempts', r.attempts)
                                order by r.queued_since), '[]'::jsonb)
        from (select t.title, t.state, t.reason, o.name as origin, e.name as executing,
                     t.attempts, t.queued_since
                from private.routed_tasks t
                join private.systems o on o.system_id = t.origin_system
                left join private.systems e on e.system_id = t.lease_owner
               where o.owner = v_owner and t.state not in ('done')
               order by t.queued_since
               limit 50) r),
    'cost_by_day', (
      select coalesce(jsonb_agg(jsonb_build_object('system', c.name, 'day', c.day,
                                                   'tasks', c.tasks, 'cost_usd', c.cost_usd)
                                order by c.day desc, c.name), '[]'::jsonb)
        from (select s.name, (t.updated_at at time zone 'utc')::date as day, count(*) as tasks,
                     coalesce(sum(t.cost_usd), 0) as cost_usd
                from private.task_summaries t
                join private.systems s using (system_id)
               where s.owner = v_owner
                 and t.updated_at >= date_trunc('day', now() at time zone 'utc')
                                     at time zone 'utc' - interval '1 day'
               group by s.name, (t.updated_at at time zone 'utc')::date) c));
end
$$;

revoke all on function api.fleet_digest(timestamptz) from public, anon;
grant execute on function api.fleet_digest(timestamptz) to authenticated;

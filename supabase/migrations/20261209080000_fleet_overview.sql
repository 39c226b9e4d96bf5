-- api.fleet_overview: what a node's dashboard shows of its fleet (issue 26, "One fleet"), in
-- one call made by its background refresher: every system of the caller's owner with its
-- presence and reason, slots, repositories and latest health snapshot; the tasks per state per
-- system; the fleet's open alerts (the newest 50); cost per system per day (the last 14 days).
--
-- Only counts, presence and alerts: a system's own JWT still reads only its own task rows
-- (row-level security on the views); the fleet's tasks one by one are an operator's to read
-- (`api.fleet_tasks` with an operator's session).

create function api.fleet_overview() returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_system uuid := private.caller_system();
  v_owner uuid;
begin
  select s.owner into v_owner from private.systems s where s.system_id = v_system;
  return jsonb_build_object(
    'server_time', now(),
    'systems', (
      select coalesce(jsonb_agg(
               (to_jsonb(v) - 'owner')
               || jsonb_build_object('health', h.metrics, 'health_at', h.window_start)
               order by v.name, v.system_id), '[]'::jsonb)
        from api.systems v
        left join lateral (
          select x.metrics, x.window_start
            from private.health x
           where x.system_id = v.system_id
           order by x.window_start desc
           limit 1) h on true
       where v.owner = v_owner),
    'tasks_by_state', (
      select coalesce(jsonb_agg(jsonb_build_object(
               'system_name', s.name, 'state', t.state, 'tasks', t.n)
               order by s.name, t.state), '[]'::jsonb)
        from (select x.system_id, x.state::text as state, count(*) as n
                from private.task_summaries x
               where x.system_id in (select o.system_id from private.systems o
                                      where o.owner = v_owner)
               group by x.system_id, x.state) t
        join private.systems s using (system_id)),
    'open_alerts', (
      select coalesce(jsonb_agg(a order by a.created_at desc), '[]'::jsonb)
        from (select x.alert_id, s.name as system_name, x.severity, x.kind, x.message,
                     x.task_id, x.created_at
                from private.alerts x
                join private.systems s using (system_id)
               where s.owner = v_owner and x.resolved_at is null
               order by x.created_at desc
               limit 50) a),
    'daily_cost', (
      select coalesce(jsonb_agg(c order by c.day, c.system_name), '[]'::jsonb)
        from (select s.name as system_name, (x.updated_at at time zone 'utc')::date as day,
                     coalesce(sum(x.cost_usd), 0) as cost_usd
                from private.task_summaries x
                join private.systems s using (system_id)
               where s.owner = v_owner
                 and x.updated_at >= now() - interval '14 days'
               group by s.name, (x.updated_at at time zone 'utc')::date) c));
end
$$;
revoke execute on function api.fleet_overview() from public, anon;
grant execute on function api.fleet_overview() to authenticated;

-- Set-based ingest checks (issue 12, T3).
--
-- `private.check_item` checks one item in a block with an exception handler: a subtransaction
-- per item, plus a query per item for `foreign_item`. For a catch-up batch of 2,000 task
-- summaries that was about half of the time `api.ingest_batch` took. `private.check_items`
-- gives the same codes and messages for a whole stream in one statement: every item cast to its
-- type by one query, with no exception handler. An item that does not cast (a value of the
-- wrong type, an item that is not an object) makes that statement fail; the ingest then checks
-- the stream item by item with `private.check_item` as before, which names the field.

-- The error of each item of one stream of system `p_system`, as (index from 1, code, message)
-- for the bad items only, in the order and with the words of `private.check_item`. Raises when
-- an item does not cast to its type or the stream is unknown.
create function private.check_items(p_stream text, p_items jsonb, p_system uuid)
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
                 or exists (select from private.task_summaries t
                             where t.task_id = x.task_id and t.system_id <> p_system)
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
               when exists (select from private.reports r
                             where r.task_id = x.task_id and r.attempt = x.attempt
                               and r.system_id <> p_system)
                 or exists (select from private.task_summaries t
                             where t.task_id = x.task_id and t.system_id <> p_system)
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

-- The body of `api.ingest_batch` (which wraps it since `..._duplicate_outcome.sql`), with the
-- set-based check above in place of the item-by-item one.
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

revoke execute on function private.ingest_batch_once(jsonb) from public, anon, authenticated;

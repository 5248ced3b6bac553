-- The server's counters in the Prometheus text exposition format, so a
-- rollout can be watched and compared per variant from any scraper:
--   app:get("/metrics", function() return 200, sluice.metrics(),
--     { ["Content-Type"] = "text/plain; version=0.0.4" } end)
-- In the server, the text starts with what the admin listener's /metrics
-- says (core/metrics.c: the whole process, histograms, quotas, shedding),
-- followed by the families only the Lua side knows (this worker's Lua
-- memory and timers, per-route script errors, refusals and views).
local metrics = {}

local function escape(v)
  return (tostring(v):gsub("[\\\n\"]", { ["\\"] = "\\\\", ["\n"] = "\\n", ['"'] = '\\"' }))
end

local function labels(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = ('%s="%s"'):format(k, escape(t[k])) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- stats: what sluice.stats() returns; core_text: the C side's exposition
-- (core.stats("prometheus")), nil where there is none (the test kit):
-- then the server's figures are rendered from stats here.
function metrics.render(stats, core_text)
  local out = {}
  if core_text then out[1] = (core_text:gsub("\n$", "")) end
  local function metric(name, kind, help, samples)
    out[#out + 1] = ("# HELP sluice_%s %s"):format(name, help)
    out[#out + 1] = ("# TYPE sluice_%s %s"):format(name, kind)
    for _, s in ipairs(samples) do
      out[#out + 1] = ("sluice_%s%s %s"):format(name, s[2] and labels(s[2]) or "", ("%.17g"):format(s[1]))
    end
  end
  local function one(name, kind, help, v) metric(name, kind, help, { { v or 0 } }) end

  if not core_text then   -- the server's figures, where C does not render them
    one("connections", "gauge", "Open connections.", stats.connections)
    one("accepted_total", "counter", "Connections accepted.", stats.accepted)
    one("refused_busy_total", "counter", "Connections refused with 503 over --max-conns.", stats.refused_busy)
    one("requests_total", "counter", "Requests dispatched.", stats.requests)
    one("streams_opened_total", "counter", "SSE streams opened.", stats.streams_opened)
    one("slow_consumers_closed_total", "counter", "Streams closed over the queue cap.", stats.slow_closed)
    one("slow_consumers_gapped_total", "counter", "Times a drop-oldest stream lost events.", stats.slow_gapped)
    one("published_total", "counter", "Events published.", stats.published)
    one("delivered_total", "counter", "Event deliveries queued for subscribers.", stats.delivered)
    one("channels", "gauge", "Channels with subscribers or history.", stats.channels)
    one("subscriptions", "gauge", "Stream subscriptions.", stats.subscriptions)
    one("history_events", "gauge", "Events held in channel histories.", stats.history_events)
    one("history_bytes", "gauge", "Bytes held in channel histories (bounded by --max-history-bytes).",
      stats.history_bytes)
    local wc, ws = {}, {}
    for i, w in ipairs(stats.workers or {}) do
      wc[#wc + 1] = { w.connections, { worker = tostring(i - 1) } }
      ws[#ws + 1] = { w.streams, { worker = tostring(i - 1) } }
  end
  metric("worker_connections", "gauge", "Open connections per worker thread.", wc)
  metric("worker_streams", "gauge", "Open streams per worker thread.", ws)
  end
  -- Below: only the Lua side knows these (the calling worker's state and
  -- its runtime's counts).
  one("lua_memory_bytes", "gauge", "Memory held by the Lua state.", stats.lua_memory)

  local rt = stats.runtime or {}
  one("reloads_total", "counter", "Reloads of the apps directory.", rt.reloads)
  one("script_load_errors_total", "counter", "Scripts that failed to load or reload.", rt.load_errors)
  one("timers", "gauge", "Script timers running.", rt.timers)
  local st = {}
  for path, n in pairs(rt.timers_by_script or {}) do st[#st + 1] = { n, { script = path } } end
  table.sort(st, function(a, b) return a[2].script < b[2].script end)
  metric("script_timers", "gauge", "Script timers running per script (bounded per script version).", st)

  local req, err, streams, rejected, authf, variants = {}, {}, {}, {}, {}, {}
  for _, r in ipairs(rt.routes or {}) do
    local l = { method = r.method, route = r.pattern }
    req[#req + 1] = { r.requests, l }
    err[#err + 1] = { r.errors, l }
    if r.kind == "stream" then streams[#streams + 1] = { r.streams, l } end
    for status, n in pairs(r.rejected or {}) do
      rejected[#rejected + 1] = { n, { method = r.method, route = r.pattern, status = status } }
    end
    for reason, n in pairs(r.auth_failures or {}) do
      authf[#authf + 1] = { n, { method = r.method, route = r.pattern, reason = reason } }
    end
    for variant, n in pairs(r.served_variants or {}) do
      variants[#variants + 1] = { n, { method = r.method, route = r.pattern, variant = variant } }
    end
  end
  metric("route_requests_total", "counter", "Requests per route.", req)
  metric("route_errors_total", "counter", "Script errors per route (answered 500).", err)
  metric("route_streams_total", "counter", "Streams opened per route.", streams)
  metric("route_rejected_total", "counter", "Requests answered with 4xx/5xx per route and status.", rejected)
  metric("route_auth_failures_total", "counter", "Authorization refusals per route and reason.", authf)
  metric("route_variant_total", "counter", "Requests served per route and variant.", variants)

  local vev, vops, verr = {}, {}, {}
  for _, v in ipairs(rt.views or {}) do
    local l = { view = v.key }
    vev[#vev + 1] = { v.events, l }
    vops[#vops + 1] = { v.mask_ops, l }
    verr[#verr + 1] = { v.errors, l }
  end
  metric("view_events_total", "counter", "Events transformed per view (once per event, not per subscriber).", vev)
  metric("view_mask_operations_total", "counter", "Fields masked per view.", vops)
  metric("view_errors_total", "counter", "View transforms that failed (event dropped for that view).", verr)
  return table.concat(out, "\n") .. "\n"
end

return metrics

-- A route's policy, applied before its handler: CORS, then authorization,
-- then the quota, then the choice of variant. Each step either lets the
-- request through (adding response headers) or answers it.
local core = require "sluice.core"
local log = require "sluice.log"
local quota = require "sluice.quota"

local gate = {}

-- The route's quota for req (h: its connection): nil to go on, or a 429
-- (a 503 when the quota table is full) with Retry-After. The key function
-- is script code: it runs here, under the request's CPU budget.
local function over_quota(group, q, req, h, headers)
  local key = quota.key_of(q, req)
  -- The route's identity in the process-wide table: the same in every
  -- worker (same scripts), and across a reload.
  local id = group.quota_id
  if not id then
    id = group.method .. " " .. group.pattern
    group.quota_id = id
  end
  local verdict, retry = core.quota_take(h, id, key, q.streams, q.rate, q.burst,
                                         group.kind == "stream")
  if verdict == "ok" then return nil end
  local by = group.stats.quota
  if not by then by = {}; group.stats.quota = by end
  by[verdict] = (by[verdict] or 0) + 1
  if verdict == "rate" then retry = math.max(1, retry) else retry = q.retry_after end
  headers["Retry-After"] = ("%d"):format(retry)
  return verdict == "full" and 503 or 429
end

-- Returns { headers = {...}, handler = fn } to proceed, or
-- nil, status, headers to answer now. h: the request's connection.
function gate.pass(group, req, h)
  local main = group.main
  if not (main.cors or main.auth or main.rollout or main.quota) then
    req.variant = group.default
    local pass = group.plain_pass   -- no policy: the same answer every time
    if not pass then
      pass = { handler = main.handler, script = main.script }
      group.plain_pass = pass
    end
    return pass
  end
  local headers = {}
  if main.cors then
    local h = main.cors:headers(req)
    if not h then return nil, 403, nil end
    for k, v in pairs(h) do headers[k] = v end
  end
  if main.auth then
    local auth = require "sluice.auth"
    local claims, reason = auth.jwt(req, main.auth)
    if not claims then
      group.stats.auth_failures[reason] = (group.stats.auth_failures[reason] or 0) + 1
      -- The reason goes to the log, never to the client.
      log.info("%s %s: authorization refused (%s) for %s", req.method, req.path, tostring(reason),
               tostring(req.remote_addr))
      local status = main.auth.status or 401
      if status == 401 then
        headers["WWW-Authenticate"] = auth.challenge { realm = main.auth.realm, reason = reason }
      end
      return nil, status, headers
    end
    req.claims = claims
  end
  if main.quota then
    local status = over_quota(group, main.quota, req, h, headers)
    if status then return nil, status, headers end
  end
  local decl = main
  if main.rollout then
    local variant = main.rollout:choose(req)
    decl = group.variants[variant]
    if not decl then
      log.warn("%s %s: variant %s has no handler; serving %s", req.method, group.pattern,
               tostring(variant), group.default)
      variant, decl = group.default, main
    end
    req.variant = variant
    group.stats.variants[variant] = (group.stats.variants[variant] or 0) + 1
    headers[main.rollout_header] = variant
  else
    req.variant = group.default
  end
  -- script: the variant's own file, where its views are declared.
  return { headers = headers, handler = decl.handler, script = decl.script }
end

-- Answers an OPTIONS request for a path whose route has a CORS policy.
function gate.preflight(group, req)
  return group.main.cors:preflight(req)
end

return gate

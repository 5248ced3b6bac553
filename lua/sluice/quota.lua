-- Route quotas: what a route's `quota = {...}` option means, compiled
-- while the script loads, and the key of a request. The counts live in C
-- (core/quota.c), shared by every worker; this module only names them.
--
--   quota = {
--     key = function(req) return ... end      -- or a shorthand string:
--           "addr"                  the client's address
--           "user"                  req.claims.sub (after auth)
--           "tenant:X-Tenant-ID"    req.claims.tenant, else that header
--           "header:X-Api-Key"      that header
--           "claim:org"             that claim of req.claims
--     streams = 100,                -- open streams per key (stream routes)
--     rate = { 20, per = 1, burst = 40 },   -- requests per key: 20 per 1 s,
--                                           -- bursts up to 40 (default 20)
--     retry_after = 5,              -- Retry-After when the streams cap is hit
--   }
-- A key that comes out nil or empty falls back to the client's address.
local quota = {}

local function header_key(name)
  return function(req) return req.headers[name] end
end

local function claim_key(name)
  return function(req)
    local claims = req.claims
    return type(claims) == "table" and claims[name] or nil
  end
end

local function shorthand(spec)
  if spec == "addr" then return function() return nil end end   -- nil: the address
  if spec == "user" then return claim_key("sub") end
  local kind, arg
  local colon = spec:find(":", 1, true)
  if colon then kind, arg = spec:sub(1, colon - 1), spec:sub(colon + 1) end
  if not kind or arg == "" then
    error(("unknown key %q (a function, \"addr\", \"user\", \"tenant:HEADER\", "
           .. "\"header:NAME\" or \"claim:NAME\")"):format(spec), 0)
  end
  if kind == "header" then return header_key(arg) end
  if kind == "claim" then return claim_key(arg) end
  if kind == "tenant" then
    local claim, header = claim_key("tenant"), header_key(arg)
    return function(req) return claim(req) or header(req) end
  end
  error(("unknown key kind %q in %q"):format(kind, spec), 0)
end

local function positive(v, what)
  if type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge then
    error(what .. " must be a positive number", 0)
  end
  return v
end

function quota.compile(spec)
  if type(spec) ~= "table" then error("quota must be a table", 0) end
  for k in pairs(spec) do
    if k ~= "key" and k ~= "streams" and k ~= "rate" and k ~= "retry_after" then
      error(("unknown option %q"):format(tostring(k)), 0)
    end
  end
  local key = spec.key or "addr"
  if type(key) == "string" then key = shorthand(key)
  elseif type(key) ~= "function" then error("key must be a function or a string", 0) end
  local q = { key = key, streams = 0, rate = 0, burst = 0, retry_after = 5 }
  if spec.streams ~= nil then
    q.streams = positive(spec.streams, "streams")
    if q.streams ~= math.floor(q.streams) or q.streams >= 2^32 then error("streams must be a whole number", 0) end
  end
  if spec.rate ~= nil then
    local r = spec.rate
    if type(r) == "number" then r = { r } end
    if type(r) ~= "table" then error("rate must be { n, per = seconds, burst = n }", 0) end
    local n = positive(r[1], "rate[1] (requests)")
    local per = r.per == nil and 1 or positive(r.per, "rate.per (seconds)")
    q.rate = n / per
    q.burst = r.burst == nil and n or positive(r.burst, "rate.burst")
    if q.burst < 1 then error("rate.burst must be at least 1", 0) end
  end
  if spec.retry_after ~= nil then
    q.retry_after = math.max(1, math.ceil(positive(spec.retry_after, "retry_after")))
  end
  if q.streams == 0 and q.rate == 0 then error("give streams = n, rate = { n, per = s }, or both", 0) end
  return q
end

-- The key of req: what the key function returned, as a string, or the
-- client's address when it returned nothing.
function quota.key_of(q, req)
  local k = q.key(req)
  if k == nil or k == false or k == "" then return "addr:" .. tostring(req.remote_addr) end
  local t = type(k)
  if t == "number" then return "k:" .. ("%.17g"):format(k) end
  if t ~= "string" then error("quota key function returned a " .. t .. " (want a string or number)", 0) end
  return "k:" .. k
end

return quota

-- The request object a handler receives. Headers are looked up without
-- regard to case; query and cookies are parsed on first use only, so a
-- route that never reads them never pays for them.
--
-- Client input is parsed in linear time: pieces are split on one byte,
-- then cut at the first "=" (a plain find) and trimmed by byte scans
-- (sluice.text). No pattern here can backtrack over a long run of blanks.
local router = require "sluice.router"
local text = require "sluice.text"

local find, sub, byte = string.find, string.sub, string.byte
local trim = text.trim

local request = {}

-- "+" is a blank in a query; most keys and values have neither "+" nor
-- "%", and a plain find is much cheaper than a gsub that changes nothing.
local function url_decode(s)
  if find(s, "+", 1, true) then s = s:gsub("%+", " ") end
  return router.unescape(s)
end
request.url_decode = url_decode

function request.parse_query(qs)
  local q = {}
  if not qs or qs == "" then return q end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair, ""
    local eq = find(pair, "=", 1, true)
    if eq then k, v = sub(pair, 1, eq - 1), sub(pair, eq + 1) end
    k = url_decode(k)
    if k ~= "" and q[k] == nil then q[k] = url_decode(v) end   -- first value wins
  end
  return q
end

function request.parse_cookies(header)
  local c = {}
  if not header then return c end
  -- name = value; pieces without "=" or with an empty name are skipped;
  -- blanks around name and value are not part of them; the first wins.
  for pair in header:gmatch("[^;]+") do
    local eq = find(pair, "=", 1, true)
    if eq then
      local k = trim(pair, 1, eq - 1)
      if k ~= "" and c[k] == nil then
        local v = trim(pair, eq + 1)
        if #v >= 2 and byte(v, 1) == 34 and byte(v, -1) == 34 then v = sub(v, 2, -2) end
        c[k] = v
      end
    end
  end
  return c
end

local headers_mt = {
  __index = function(t, k)
    if type(k) ~= "string" then return nil end
    local lower = k:lower()
    if lower == k then return nil end
    return rawget(t, lower)
  end,
}

-- sluice's traceparent is "00-<trace id>-<span id>-<flags>".
local lazy = {
  query = function(r) return request.parse_query(r.query_string) end,
  cookies = function(r) return request.parse_cookies(r.headers.cookie) end,
  trace_id = function(r) local tp = rawget(r, "traceparent"); return tp and sub(tp, 4, 35) end,
  span_id = function(r) local tp = rawget(r, "traceparent"); return tp and sub(tp, 37, 52) end,
}

-- req:log(key, value): a field for this request's access-log line (the
-- user, the tenant). Bounded: at most MAX_LOG_FIELDS keys of 1-32 letters,
-- digits, "_", "." or "-"; values strings (cut at 256 bytes), numbers or
-- booleans; nil removes a key. Returns false when the key is one too many.
local MAX_LOG_FIELDS = 8
request.MAX_LOG_FIELDS = MAX_LOG_FIELDS

local methods = {}

function methods.log(r, key, value)
  if type(key) ~= "string" or #key == 0 or #key > 32 or find(key, "[^%w_%.%-]") then
    error("req:log(key, value): key must be 1-32 letters, digits, '_', '.' or '-'", 2)
  end
  local tv = type(value)
  if tv == "string" then
    if #value > 256 then value = sub(value, 1, 256) end
  elseif value ~= nil and tv ~= "number" and tv ~= "boolean" then
    error("req:log(key, value): value must be a string, number or boolean", 2)
  end
  local fields = rawget(r, "_log")
  if not fields then
    fields = {}
    rawset(r, "_log", fields)
  end
  local count = rawget(r, "_log_n") or 0
  local known = fields[key] ~= nil
  if not known and value ~= nil then
    if count >= MAX_LOG_FIELDS then return false end
    rawset(r, "_log_n", count + 1)
  elseif known and value == nil then
    rawset(r, "_log_n", count - 1)
  end
  fields[key] = value
  local on_change = rawget(r, "_on_log")
  if on_change then on_change(r) end
  return true
end

local request_mt = {
  __index = function(r, k)
    local m = methods[k]
    if m then return m end
    local make = lazy[k]
    if not make then return nil end
    local v = make(r)
    rawset(r, k, v)
    return v
  end,
}

-- headers: a table with lower-case names (as the core builds it).
function request.new(method, path, query_string, headers, body, remote_addr, params)
  return setmetatable({
    method = method, path = path, query_string = query_string or "",
    headers = setmetatable(headers or {}, headers_mt),
    body = body or "", remote_addr = remote_addr, params = params or {},
  }, request_mt)
end

return request

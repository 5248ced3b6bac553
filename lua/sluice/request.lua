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

local lazy = {
  query = function(r) return request.parse_query(r.query_string) end,
  cookies = function(r) return request.parse_cookies(r.headers.cookie) end,
}

local request_mt = {
  __index = function(r, k)
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

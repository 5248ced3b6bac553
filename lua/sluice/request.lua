-- The request object a handler receives. Headers are looked up without
-- regard to case; query and cookies are parsed on first use only, so a
-- route that never reads them never pays for them.
local router = require "sluice.router"

local request = {}

local function url_decode(s)
  return router.unescape((s:gsub("+", " ")))
end
request.url_decode = url_decode

function request.parse_query(qs)
  local q = {}
  if not qs or qs == "" then return q end
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = url_decode(k)
    if k ~= "" and q[k] == nil then q[k] = url_decode(v) end   -- first value wins
  end
  return q
end

function request.parse_cookies(header)
  local c = {}
  if not header then return c end
  for pair in header:gmatch("[^;]+") do
    local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if k and k ~= "" and c[k] == nil then
      if v:sub(1, 1) == '"' and v:sub(-1) == '"' and #v >= 2 then v = v:sub(2, -2) end
      c[k] = v
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

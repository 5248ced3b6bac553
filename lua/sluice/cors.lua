-- sluice.cors: Cross-Origin Resource Sharing policy for a route.
--
--   local policy = cors.new {
--     origins     = { "https://app.example.com", "*.example.com", "*" },
--     credentials = false,   -- send Access-Control-Allow-Credentials: true
--     methods     = { "GET", "POST", "OPTIONS" },            -- default
--     headers     = { "Authorization", "Content-Type", "Last-Event-ID" }, -- default
--     expose      = {},      -- Access-Control-Expose-Headers
--     max_age     = nil,     -- seconds, Access-Control-Max-Age (preflight cache)
--     reject      = false,   -- disallowed origins get 403 instead of no CORS headers
--   }
--
-- Origin patterns (matched case-insensitively; a trailing "/" in the config
-- is tolerated):
--   "https://app.example.com"   exact origin: scheme, host and port must all match
--   "app.example.com"           that host over http or https, default port
--   "https://*.example.com"     any subdomain, at any depth, over https only:
--                               a.example.com and a.b.example.com match;
--                               example.com itself, evil-example.com and
--                               example.com.evil.net do not
--   "*.example.com"             the same over http or https
--   "...:8443"                  a pattern with a port matches only that port;
--                               a pattern without one matches only origins
--                               without a port
--   "null"                      the opaque origin (sandboxed iframes, file:),
--                               only when listed explicitly
--   "*"                         any origin
--
-- Credentials and "*": a response never says `Access-Control-Allow-Origin: *`
-- together with credentials (browsers refuse it).  With origins {"*"} and
-- credentials = true the policy echoes the request's Origin instead, which
-- means EVERY site may read credentialed responses of this route: only do
-- that on purpose.  The opaque origin "null" is not echoed in that case.
-- Without credentials, "*" is answered with a literal "*".
--
--   policy:allowed(origin) -> bool
--
--   policy:headers(req) -> headers | nil, 403
--     For an actual (non-preflight) request.  Always includes Vary: Origin
--     (the response depends on it, caches must know).  Allowed origin:
--     Access-Control-Allow-Origin (+ -Credentials, -Expose-Headers).  No
--     Origin header: just Vary.  Disallowed origin: just Vary, or nil, 403
--     when reject = true (the caller answers 403).
--
--   policy:preflight(req) -> status, headers
--     For OPTIONS.  A CORS preflight (Origin and Access-Control-Request-Method
--     present) from an allowed origin asking for an allowed method and allowed
--     headers: 204 with Allow-Origin/-Methods/-Headers(/-Credentials/-Max-Age).
--     Any check failing: 403 if reject, else 204 with only Vary (the browser
--     then blocks the request; nothing about the policy is revealed).
--     Not a preflight (no Origin or no Access-Control-Request-Method): 204
--     with Vary and Allow: <methods>.
--     headers = {"*"} allows any request header (echoed back when
--     credentials are on, since "*" is literal then).
--
-- Every call returns a fresh table: callers may add to it.

local text = require "sluice.text"

local type, ipairs, find, match, lower = type, ipairs, string.find, string.match, string.lower
local trim = text.trim

local M = {}
local Policy = {}
Policy.__index = Policy

local DEFAULT_METHODS = { "GET", "POST", "OPTIONS" }
local DEFAULT_HEADERS = { "Authorization", "Content-Type", "Last-Event-ID" }
local SCHEMELESS = { http = true, https = true }

local function cfg_error(msg) error("sluice.cors: " .. msg, 3) end

-- "host[:port]" -> host, port ("" when absent) | nil.  Hosts are DNS names,
-- IPv4 literals or bracketed IPv6 literals; no userinfo, path or controls.
local function split_hostport(hp)
  local host, port = match(hp, "^(%[[%x:%.]+%])(.*)$")
  if not host then host, port = match(hp, "^([%w%-%.]+)(.*)$") end
  if not host then return nil end
  if port ~= "" then
    port = match(port, "^:(%d+)$")
    if not port then return nil end
  end
  return host, port
end

-- Parses a request Origin: "scheme://host[:port]" -> scheme, host, port.
local function parse_origin(origin)
  local scheme, hp = match(origin, "^(%a[%w%+%-%.]*)://(.+)$")
  if not scheme then return nil end
  local host, port = split_hostport(hp)
  if not host then return nil end
  return scheme, host, port
end

local function compile_origin(self, pat)
  if type(pat) ~= "string" or pat == "" then cfg_error("origins must be non-empty strings") end
  local p = lower(pat):gsub("/$", "")
  if p == "*" then self.any = true; return end
  if p == "null" then self.null = true; return end
  local scheme, hp = match(p, "^(%a[%w%+%-%.]*)://(.*)$")
  if not scheme then hp = p end
  local wildcard = false
  if hp:sub(1, 2) == "*." then wildcard = true; hp = hp:sub(3) end
  local host, port = split_hostport(hp)
  if not host or find(host, "*", 1, true) or (wildcard and not find(host, ".", 1, true)) then
    cfg_error("invalid origin pattern '" .. pat .. "' (expected e.g. https://app.example.com, *.example.com or *)")
  end
  local hostport = port ~= "" and (host .. ":" .. port) or host
  if wildcard then
    self.wild[#self.wild + 1] = { scheme = scheme, suffix = "." .. host, port = port }
  elseif scheme then
    self.exact[scheme .. "://" .. hostport] = true
  else
    self.exact_host[hostport] = true
  end
end

local function token_list(list, name, default)
  if list == nil then list = default end
  if type(list) ~= "table" then cfg_error(name .. " must be a list of strings") end
  local out = {}
  for _, v in ipairs(list) do
    if type(v) ~= "string" or not match(v, "^[%w!#%$%%&'%*%+%-%.%^_`|~]+$") then
      cfg_error(name .. " entries must be HTTP tokens, got '" .. tostring(v) .. "'")
    end
    out[#out + 1] = v
  end
  return out
end

function M.new(opts)
  if type(opts) ~= "table" then cfg_error("cors.new(opts): opts table required") end
  local self = setmetatable({ exact = {}, exact_host = {}, wild = {}, any = false, null = false }, Policy)
  local origins = opts.origins
  if type(origins) == "string" then origins = { origins } end
  if type(origins) ~= "table" or #origins == 0 then
    cfg_error("opts.origins must be a non-empty list (use {\"*\"} to allow any origin)")
  end
  for _, o in ipairs(origins) do compile_origin(self, o) end
  self.credentials = opts.credentials and true or false
  self.reject = opts.reject and true or false

  local methods = token_list(opts.methods, "methods", DEFAULT_METHODS)
  self.method_set = {}
  for _, m in ipairs(methods) do self.method_set[m] = true end
  self.methods_str = table.concat(methods, ", ")

  local headers = token_list(opts.headers, "headers", DEFAULT_HEADERS)
  self.header_set, self.headers_any = {}, false
  local listed = {}
  for _, h in ipairs(headers) do
    if h == "*" then self.headers_any = true
    else self.header_set[lower(h)] = true; listed[#listed + 1] = h end
  end
  self.headers_str = table.concat(listed, ", ")

  local expose = token_list(opts.expose, "expose", {})
  self.expose_str = #expose > 0 and table.concat(expose, ", ") or nil

  if opts.max_age ~= nil then
    if type(opts.max_age) ~= "number" or opts.max_age < 0 or opts.max_age % 1 ~= 0 then
      cfg_error("max_age must be a non-negative integer (seconds)")
    end
    self.max_age = tostring(opts.max_age)
  end
  return self
end

function Policy:allowed(origin)
  if type(origin) ~= "string" then return false end
  local o = lower(origin)
  if o == "null" then return self.null or (self.any and not self.credentials) end
  local scheme, host, port = parse_origin(o)
  if not scheme then return false end
  if self.any then return true end
  local hostport = port ~= "" and (host .. ":" .. port) or host
  if self.exact[scheme .. "://" .. hostport] then return true end
  if SCHEMELESS[scheme] and self.exact_host[hostport] then return true end
  local wild = self.wild
  for i = 1, #wild do
    local w = wild[i]
    local suffix = w.suffix
    if w.port == port and #host > #suffix and host:sub(-#suffix) == suffix
       and (w.scheme == scheme or (w.scheme == nil and SCHEMELESS[scheme])) then
      return true
    end
  end
  return false
end

local function header(req, name)
  local h = req.headers
  local v = h and h[name]
  return v
end

-- Access-Control-Allow-Origin value for an allowed origin.
function Policy:_allow_origin(origin)
  if self.any and not self.credentials then return "*" end
  return origin
end

function Policy:headers(req)
  local origin = header(req, "origin")
  if origin == nil then return { Vary = "Origin" } end
  if type(origin) ~= "string" or not self:allowed(origin) then
    if self.reject then return nil, 403 end
    return { Vary = "Origin" }
  end
  local h = { Vary = "Origin", ["Access-Control-Allow-Origin"] = self:_allow_origin(origin) }
  if self.credentials then h["Access-Control-Allow-Credentials"] = "true" end
  if self.expose_str then h["Access-Control-Expose-Headers"] = self.expose_str end
  return h
end

local PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"

-- Are all headers listed in Access-Control-Request-Headers allowed?
function Policy:_headers_ok(acrh)
  if acrh == nil or self.headers_any then return true end
  if type(acrh) ~= "string" then return false end
  for name in acrh:gmatch("[^,]+") do
    name = lower(trim(name))   -- byte scans: "^%s*(.-)%s*$" is quadratic on blanks
    if name ~= "" and not self.header_set[name] then return false end
  end
  return true
end

function Policy:preflight(req)
  local origin = header(req, "origin")
  local acrm = header(req, "access-control-request-method")
  if origin == nil or acrm == nil then
    return 204, { Vary = "Origin", Allow = self.methods_str }
  end
  local acrh = header(req, "access-control-request-headers")
  if type(origin) ~= "string" or type(acrm) ~= "string" or not self:allowed(origin)
     or not self.method_set[acrm] or not self:_headers_ok(acrh) then
    if self.reject then return 403, { Vary = PREFLIGHT_VARY } end
    return 204, { Vary = PREFLIGHT_VARY }
  end
  local h = {
    Vary = PREFLIGHT_VARY,
    ["Access-Control-Allow-Origin"] = self:_allow_origin(origin),
    ["Access-Control-Allow-Methods"] = self.methods_str,
  }
  if self.headers_any then
    if self.credentials then
      -- echo what was asked, if it is a plain list of header names
      if type(acrh) == "string" and match(acrh, "^[%w!#%$%%&'%*%+%-%.%^_`|~, \t]+$") then
        h["Access-Control-Allow-Headers"] = acrh
      end
    else
      h["Access-Control-Allow-Headers"] = "*"
    end
  elseif self.headers_str ~= "" then
    h["Access-Control-Allow-Headers"] = self.headers_str
  end
  if self.credentials then h["Access-Control-Allow-Credentials"] = "true" end
  if self.max_age then h["Access-Control-Max-Age"] = self.max_age end
  return 204, h
end

return M

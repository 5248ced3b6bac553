-- Path patterns with named parameters, matched most-specific first.
--   "/orders/:user"   :name matches one non-empty segment
--   "/files/*path"    *name matches the rest of the path (may be empty)
-- Static segments beat parameters, parameters beat a splat, so declaration
-- order never decides between "/orders/new" and "/orders/:id".
local router = {}

local find = string.find

-- "%41" -> "A"; every "%" followed by two hex digits, in one linear gsub
-- over a table of all of them (no call per escape). Most segments have no
-- "%" at all: a plain find skips the gsub.
local HEX = {}
for i = 0, 255 do
  local h = ("%02x"):format(i)
  local c = string.char(i)
  for _, v in ipairs { h, h:upper(), h:sub(1, 1):upper() .. h:sub(2), h:sub(1, 1) .. h:sub(2):upper() } do
    HEX[v] = c
  end
end

local function unescape(s)
  if not find(s, "%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", HEX))
end
router.unescape = unescape

local function split(path)
  local segs = {}
  for seg in path:gmatch("[^/]+") do segs[#segs + 1] = seg end
  return segs
end

-- Compiles a pattern into { segs = {...}, shape = "..." , rank = {...} }.
-- shape is the pattern with names erased: two routes with the same method
-- and shape can never be told apart, so they conflict.
function router.compile(pattern)
  if type(pattern) ~= "string" or pattern:sub(1, 1) ~= "/" then
    error(("route pattern must be a string starting with '/', got %s"):format(tostring(pattern)), 2)
  end
  local segs, shape, rank = {}, {}, {}
  local parts = split(pattern)
  for i, part in ipairs(parts) do
    local kind, name = "static", part
    local first = part:sub(1, 1)
    if first == ":" then
      kind, name = "param", part:sub(2)
    elseif first == "*" then
      if i ~= #parts then error("a *splat must be the last segment in " .. pattern, 2) end
      kind, name = "splat", part:sub(2)
    end
    if kind ~= "static" and not name:match("^[%a_][%w_]*$") then
      error(("bad parameter name %q in route %s"):format(name, pattern), 2)
    end
    segs[i] = { kind = kind, name = name }
    shape[i] = kind == "static" and part or (kind == "param" and ":" or "*")
    rank[i] = kind == "static" and 0 or (kind == "param" and 1 or 2)
  end
  return { pattern = pattern, segs = segs, shape = "/" .. table.concat(shape, "/"),
           rank = rank, nsegs = #segs }
end

-- True if a is more specific than b.
local function more_specific(a, b)
  local n = math.max(#a.rank, #b.rank)
  for i = 1, n do
    local ra, rb = a.rank[i], b.rank[i]
    if ra == nil then return rb == 2 end      -- shorter wins only over a splat
    if rb == nil then return ra ~= 2 end
    if ra ~= rb then return ra < rb end
  end
  return a.order < b.order
end

-- Matches a compiled pattern against a list of path segments.
local function match(c, segs)
  local params
  for i, seg in ipairs(c.segs) do
    local value = segs[i]
    if seg.kind == "splat" then
      local rest = {}
      for j = i, #segs do rest[#rest + 1] = unescape(segs[j]) end
      params = params or {}
      params[seg.name] = table.concat(rest, "/")
      return params
    end
    if value == nil then return nil end
    if seg.kind == "static" then
      if value ~= seg.name then return nil end
    else
      params = params or {}
      params[seg.name] = unescape(value)
    end
  end
  if #segs ~= c.nsegs then return nil end
  return params or {}
end

local Router = {}
Router.__index = Router

function router.new()
  return setmetatable({ routes = {}, sorted = true }, Router)
end

-- The pattern of a route that method and pattern would clash with, or nil.
function Router:conflict(method, pattern)
  local shape = router.compile(pattern).shape
  for _, r in ipairs(self.routes) do
    if r.method == method and r.compiled.shape == shape then return r.compiled.pattern end
  end
end

-- Adds a route; entry is any table, returned by find. Returns nil, message
-- when the method and shape are taken already.
function Router:add(method, pattern, entry)
  local c = router.compile(pattern)
  local clash = self:conflict(method, pattern)
  if clash then
    return nil, ("%s %s conflicts with %s %s"):format(method, pattern, method, clash)
  end
  c.order = #self.routes + 1
  self.routes[#self.routes + 1] = { method = method, compiled = c, entry = entry }
  self.sorted = false
  return true
end

local function sort(self)
  table.sort(self.routes, function(a, b) return more_specific(a.compiled, b.compiled) end)
  self.sorted = true
end

-- Returns entry, params for the best route; or nil, allowed_methods when
-- the path exists under other methods (405); or nil when nothing matches.
function Router:find(method, path)
  if not self.sorted then sort(self) end
  local segs = split(path)
  local allowed, implied, implied_params
  for _, r in ipairs(self.routes) do
    local params = match(r.compiled, segs)
    if params then
      if r.method == method then return r.entry, params end
      -- HEAD is served by GET unless a HEAD route of its own matches.
      if method == "HEAD" and r.method == "GET" and not implied then
        implied, implied_params = r.entry, params
      end
      allowed = allowed or {}
      allowed[#allowed + 1] = r.method
    end
  end
  if implied then return implied, implied_params end
  if allowed then
    local seen, list = {}, {}
    for _, m in ipairs(allowed) do
      if not seen[m] then seen[m] = true; list[#list + 1] = m end
    end
    if seen.GET and not seen.HEAD then list[#list + 1] = "HEAD" end
    table.sort(list)
    return nil, list
  end
  return nil
end

return router

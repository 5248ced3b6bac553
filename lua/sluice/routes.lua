-- Route groups: every declaration of one method and path shape, across
-- scripts, is one route with one or more variants. The declaration without
-- `variant` is the main one: its options (auth, cors, rollout) apply to
-- the route, and it serves the default variant. Candidates declared with
-- { variant = "green" } (in the same script or a file beside it) differ
-- only in their handler.
local router = require "sluice.router"

local routes = {}
local Table = {}
Table.__index = Table

function routes.new()
  return setmetatable({ router = router.new(), groups = {} }, Table)
end

local function key_of(decl)
  return decl.method .. " " .. router.compile(decl.pattern).shape
end

local function variant_of(decl)
  if decl.variant then return decl.variant end
  return decl.rollout_spec and decl.rollout_spec.default or "stable"
end

-- Why decl cannot join this table, or nil.
function Table:conflict(decl)
  local ok, key = pcall(key_of, decl)
  if not ok then return ("%s: %s"):format(decl.where, key) end
  local g = self.groups[key]
  if not g then return nil end
  if g.kind ~= decl.kind then
    return ("%s: %s %s is declared as a %s route at %s"):format(decl.where, decl.method, decl.pattern,
                                                              g.kind, g.first.where)
  end
  local v = g.variants[variant_of(decl)]
  if v and not (decl.variant == nil and g.main) then
    return ("%s: %s %s (variant %s) is already declared at %s"):format(decl.where, decl.method,
                                                                     decl.pattern, variant_of(decl), v.where)
  end
  if decl.variant == nil and g.main then
    return ("%s: %s %s is already declared at %s"):format(decl.where, decl.method, decl.pattern, g.main.where)
  end
end

-- The first conflict among a script's declarations, or nil.
function Table:script_conflict(rec)
  local scratch = setmetatable({ router = router.new(), groups = {} }, Table)
  for k, g in pairs(self.groups) do
    local copy = { kind = g.kind, first = g.first, main = g.main, variants = {} }
    for n, v in pairs(g.variants) do copy.variants[n] = v end
    scratch.groups[k] = copy
  end
  for _, decl in ipairs(rec.app.routes) do
    local clash = scratch:conflict(decl)
    if clash then return clash end
    scratch:add(decl, rec.path)
  end
end

function Table:add(decl, script)
  decl.script = script
  local key = key_of(decl)
  local g = self.groups[key]
  if not g then
    g = { method = decl.method, pattern = decl.pattern, kind = decl.kind, first = decl, variants = {},
          stats = { requests = 0, errors = 0, streams = 0, rejected = {}, auth_failures = {}, variants = {} } }
    self.groups[key] = g
    assert(self.router:add(decl.method, decl.pattern, g))
  end
  g.variants[variant_of(decl)] = decl
  if decl.variant == nil then
    g.main = decl
    g.pattern = decl.pattern
    g.default = variant_of(decl)
  end
end

-- Routes whose variants have no main declaration cannot be served.
function Table:orphans()
  local out = {}
  for _, g in pairs(self.groups) do
    if not g.main then out[#out + 1] = g end
  end
  return out
end

function Table:find(method, path)
  return self.router:find(method, path)
end

-- Carries per-group counters over from the previous table, so a reload
-- does not reset what a rollout is being watched with.
function Table:inherit_stats(old)
  for key, g in pairs(self.groups) do
    local prev = old.groups[key]
    if prev then g.stats = prev.stats end
  end
end

return routes

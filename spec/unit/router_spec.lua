package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

local router = require "sluice.router"

-- A router with routes declared in the given order; each entry is a table
-- naming its own route so find() results are easy to compare.
local function build(routes)
  local r = router.new()
  for _, rt in ipairs(routes) do
    assert(r:add(rt[1], rt[2], { name = rt[1] .. " " .. rt[2] }))
  end
  return r
end

local function found(r, method, path)
  local entry, params = r:find(method, path)
  return entry and entry.name, params
end

describe("sluice.router", function()
  describe("parameters", function()
    local r = build {
      { "GET", "/orders/:user" },
      { "GET", "/orders/:user/items/:item" },
      { "GET", "/health" },
    }

    it("binds a :name to one path segment", function()
      local name, params = found(r, "GET", "/orders/42")
      assert.equal("GET /orders/:user", name)
      assert.same({ user = "42" }, params)
    end)

    it("binds several parameters", function()
      local name, params = found(r, "GET", "/orders/ann/items/7")
      assert.equal("GET /orders/:user/items/:item", name)
      assert.same({ user = "ann", item = "7" }, params)
    end)

    it("gives a static route an empty params table", function()
      local name, params = found(r, "GET", "/health")
      assert.equal("GET /health", name)
      assert.same({}, params)
    end)

    it("does not let a parameter match an empty or missing segment", function()
      assert.is_nil((r:find("GET", "/orders")))
      assert.is_nil((r:find("GET", "/orders/")))
    end)

    it("does not match a path with extra segments", function()
      assert.is_nil((r:find("GET", "/orders/42/extra")))
      assert.is_nil((r:find("GET", "/health/x")))
    end)

    it("ignores a trailing slash and repeated slashes", function()
      assert.same({ user = "42" }, select(2, r:find("GET", "/orders/42/")))
      assert.same({ user = "42" }, select(2, r:find("GET", "//orders//42")))
    end)

    it("answers nil (404) for a path nothing matches", function()
      local entry, allowed = r:find("GET", "/nope")
      assert.is_nil(entry)
      assert.is_nil(allowed)
    end)
  end)

  describe("percent-decoding of parameters", function()
    local r = build {
      { "GET", "/u/:name" },
      { "GET", "/files/*path" },
    }

    it("decodes %XX in a parameter", function()
      assert.same({ name = "a b" }, select(2, r:find("GET", "/u/a%20b")))
      assert.same({ name = "José" }, select(2, r:find("GET", "/u/Jos%C3%A9")))
    end)

    it("accepts upper- and lower-case hex digits", function()
      assert.same({ name = "a:b" }, select(2, r:find("GET", "/u/a%3Ab")))
      assert.same({ name = "a:b" }, select(2, r:find("GET", "/u/a%3ab")))
    end)

    it("decodes an encoded slash inside one segment without splitting on it", function()
      local name, params = found(r, "GET", "/u/a%2Fb")
      assert.equal("GET /u/:name", name)
      assert.same({ name = "a/b" }, params)
    end)

    it("keeps '+' literal in a path (it is a space only in a query)", function()
      assert.same({ name = "a+b" }, select(2, r:find("GET", "/u/a+b")))
    end)

    it("leaves a malformed escape as it is", function()
      assert.same({ name = "100%" }, select(2, r:find("GET", "/u/100%")))
      assert.same({ name = "%zz" }, select(2, r:find("GET", "/u/%zz")))
    end)

    it("decodes each segment of a splat", function()
      assert.same({ path = "a b/c/d/e" }, select(2, r:find("GET", "/files/a%20b/c%2Fd/e")))
    end)
  end)

  describe("splat", function()
    local r = build {
      { "GET", "/files/*path" },
      { "GET", "/*rest" },
    }

    it("takes the rest of the path", function()
      local name, params = found(r, "GET", "/files/a/b/c.txt")
      assert.equal("GET /files/*path", name)
      assert.same({ path = "a/b/c.txt" }, params)
    end)

    it("may be empty", function()
      assert.same({ path = "" }, select(2, r:find("GET", "/files")))
      assert.same({ path = "" }, select(2, r:find("GET", "/files/")))
    end)

    it("at the root catches everything else", function()
      local name, params = found(r, "GET", "/anything/at/all")
      assert.equal("GET /*rest", name)
      assert.same({ rest = "anything/at/all" }, params)
      assert.same({ rest = "" }, select(2, r:find("GET", "/")))
    end)

    it("must be the last segment", function()
      assert.has_error(function() router.compile("/files/*path/more") end)
    end)
  end)

  describe("compiling patterns", function()
    it("refuses a pattern that does not start with /", function()
      assert.has_error(function() router.compile("orders") end)
      assert.has_error(function() router.compile(42) end)
    end)

    it("refuses a parameter without a valid name", function()
      assert.has_error(function() router.compile("/orders/:") end)
      assert.has_error(function() router.compile("/orders/:1x") end)
      assert.has_error(function() router.compile("/files/*a-b") end)
    end)

    it("erases parameter names in the shape", function()
      assert.equal(router.compile("/a/:x/*y").shape, router.compile("/a/:p/*q").shape)
      assert.not_equal(router.compile("/a/:x").shape, router.compile("/a/*x").shape)
      assert.not_equal(router.compile("/a/:x").shape, router.compile("/b/:x").shape)
    end)
  end)

  describe("specificity", function()
    -- Every permutation of declaration order must pick the same route.
    local function permutations(list)
      local out = {}
      local function perm(a, n)
        if n <= 1 then
          local copy = {}
          for i = 1, #a do copy[i] = a[i] end
          out[#out + 1] = copy
          return
        end
        for i = 1, n do
          a[i], a[n] = a[n], a[i]
          perm(a, n - 1)
          a[i], a[n] = a[n], a[i]
        end
      end
      local a = {}
      for i = 1, #list do a[i] = list[i] end
      perm(a, #a)
      return out
    end

    local ROUTES = {
      { "GET", "/orders/new" },
      { "GET", "/orders/:id" },
      { "GET", "/orders/*rest" },
      { "GET", "/orders" },
    }
    -- path -> route expected, params expected
    local CASES = {
      { "/orders/new", "GET /orders/new", {} },
      { "/orders/17", "GET /orders/:id", { id = "17" } },
      { "/orders/17/lines", "GET /orders/*rest", { rest = "17/lines" } },
      { "/orders/new/x", "GET /orders/*rest", { rest = "new/x" } },
      { "/orders", "GET /orders", {} },
    }

    for pi, order in ipairs(permutations(ROUTES)) do
      it(("static > param > splat whatever the declaration order (#%d)"):format(pi), function()
        local r = build(order)
        for _, case in ipairs(CASES) do
          local name, params = found(r, "GET", case[1])
          assert.equal(case[2], name, "path " .. case[1])
          assert.same(case[3], params, "path " .. case[1])
        end
      end)
    end

    it("prefers a static segment at the first position where routes differ", function()
      for _, order in ipairs(permutations { { "GET", "/a/:x/c" }, { "GET", "/a/b/:y" } }) do
        local r = build(order)
        assert.equal("GET /a/b/:y", (found(r, "GET", "/a/b/c")))
        assert.equal("GET /a/:x/c", (found(r, "GET", "/a/z/c")))
      end
    end)

    it("prefers a parameter over a splat at the same position", function()
      for _, order in ipairs(permutations { { "GET", "/f/*all" }, { "GET", "/f/:one" } }) do
        local r = build(order)
        assert.equal("GET /f/:one", (found(r, "GET", "/f/x")))
        assert.equal("GET /f/*all", (found(r, "GET", "/f/x/y")))
      end
    end)

    it("keeps picking correctly after a route is added to a sorted router", function()
      local r = build { { "GET", "/orders/:id" } }
      assert.equal("GET /orders/:id", (found(r, "GET", "/orders/new")))
      assert(r:add("GET", "/orders/new", { name = "GET /orders/new" }))
      assert.equal("GET /orders/new", (found(r, "GET", "/orders/new")))
    end)

    it("falls back to a less specific route that has the requested method", function()
      local r = build { { "POST", "/orders/new" }, { "GET", "/orders/:id" } }
      local name, params = found(r, "GET", "/orders/new")
      assert.equal("GET /orders/:id", name)
      assert.same({ id = "new" }, params)
    end)
  end)

  describe("methods", function()
    local r = build {
      { "GET", "/items" },
      { "POST", "/items" },
      { "DELETE", "/items/:id" },
      { "PUT", "/items/:id" },
      { "POST", "/only-post" },
      { "GET", "/page" },
      { "HEAD", "/page" },
    }

    it("answers HEAD with the GET route", function()
      assert.equal("GET /items", (found(r, "HEAD", "/items")))
    end)

    it("lists the allowed methods, sorted, with HEAD implied by GET", function()
      local entry, allowed = r:find("PATCH", "/items")
      assert.is_nil(entry)
      assert.same({ "GET", "HEAD", "POST" }, allowed)
    end)

    it("does not imply HEAD without a GET route", function()
      local entry, allowed = r:find("GET", "/items/3")
      assert.is_nil(entry)
      assert.same({ "DELETE", "PUT" }, allowed)
      local _, allowed2 = r:find("HEAD", "/only-post")
      assert.same({ "POST" }, allowed2)
    end)

    it("lists HEAD once when it is declared as well as GET", function()
      local _, allowed = r:find("POST", "/page")
      assert.same({ "GET", "HEAD" }, allowed)
    end)

    it("prefers an explicit HEAD route over the implied GET one, in either order", function()
      assert.equal("HEAD /page", (found(r, "HEAD", "/page")))
      local r2 = build { { "HEAD", "/page" }, { "GET", "/page" } }
      assert.equal("HEAD /page", (found(r2, "HEAD", "/page")))
      assert.equal("GET /page", (found(r2, "GET", "/page")))
    end)

    it("collects methods from every route that matches the path", function()
      local r2 = build { { "POST", "/orders/new" }, { "GET", "/orders/:id" },
                         { "DELETE", "/orders/*rest" } }
      local _, allowed = r2:find("PUT", "/orders/new")
      assert.same({ "DELETE", "GET", "HEAD", "POST" }, allowed)
    end)
  end)

  describe("conflicts", function()
    it("refuses the same method and shape with different parameter names", function()
      local r = build { { "GET", "/orders/:user" } }
      local ok, err = r:add("GET", "/orders/:id", {})
      assert.is_nil(ok)
      assert.matches("/orders/:id", err, 1, true)
      assert.matches("/orders/:user", err, 1, true)
      assert.equal("/orders/:user", r:conflict("GET", "/orders/:id"))
    end)

    it("refuses two splats with different names at the same place", function()
      local r = build { { "GET", "/files/*path" } }
      assert.is_nil((r:add("GET", "/files/*rest", {})))
    end)

    it("refuses the exact same route twice", function()
      local r = build { { "POST", "/items" } }
      assert.is_nil((r:add("POST", "/items", {})))
    end)

    it("refuses a pattern that differs only by a trailing slash", function()
      local r = build { { "GET", "/items" } }
      assert.is_nil((r:add("GET", "/items/", {})))
    end)

    it("allows the same shape under another method", function()
      local r = build { { "GET", "/orders/:user" } }
      assert.is_true(r:add("POST", "/orders/:id", {}))
      assert.is_nil(r:conflict("PUT", "/orders/:x"))
    end)

    it("allows a parameter beside a static segment or a splat", function()
      local r = build { { "GET", "/orders/:user" } }
      assert.is_true(r:add("GET", "/orders/new", {}))
      assert.is_true(r:add("GET", "/orders/*rest", {}))
      assert.is_true(r:add("GET", "/orders/:user/items", {}))
    end)

    it("keeps the first route when the second is refused", function()
      local r = build { { "GET", "/orders/:user" } }
      r:add("GET", "/orders/:id", { name = "second" })
      local name, params = found(r, "GET", "/orders/5")
      assert.equal("GET /orders/:user", name)
      assert.same({ user = "5" }, params)
    end)
  end)
end)

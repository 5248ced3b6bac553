-- Table-driven specs of configurations a constructor must refuse:
-- cases = { { config, "expected part of the error message" }, ... }
-- busted gives each spec file its own `it` and `assert`: take the caller's.
return function(construct, cases)
  local env = getfenv(2)
  local it, assert = env.it, env.assert
  for i, c in ipairs(cases) do
    it("case " .. i .. ": " .. c[2], function()
      local ok, err = pcall(construct, c[1])
      assert.is_false(ok)
      assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
    end)
  end
end

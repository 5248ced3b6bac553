-- Mints an HS256 token for trying examples/orders:
--   JWT_SECRET=change-me luajit examples/token.lua SUBJECT [ROLE] [SECONDS]
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
local jwt = require "sluice.jwt"
local sub, role, ttl = arg[1], arg[2] or "customer", tonumber(arg[3] or "3600")
if not sub then
  io.stderr:write("usage: luajit examples/token.lua SUBJECT [ROLE] [SECONDS]\n")
  os.exit(2)
end
print(jwt.sign({ sub = sub, role = role, aud = "orders", exp = os.time() + ttl },
               { alg = "HS256", secret = os.getenv("JWT_SECRET") or "change-me" }))

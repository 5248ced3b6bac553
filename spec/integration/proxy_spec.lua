-- Behind nginx with its default buffering on: the stream must open and its
-- events must arrive at once, not when a proxy buffer fills or a heartbeat
-- comes round. nginx is a declared dependency (Makefile PACKAGES).
local server = require "server"
local raw = require "raw"
local socket = require "socket"

local NGINX = os.getenv("NGINX_BIN") or "/usr/sbin/nginx"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/events", function(req, s) s:subscribe("proxied") end)
app:post("/pub", function(req)
  local id, n = sluice.publish("proxied", { event = "update", data = req.body })
  return 200, tostring(n)
end)
return app
]]

local CONF = [[
worker_processes 1;
master_process off;
daemon off;
error_log %s/error.log info;
pid %s/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %s/client_body;
  proxy_temp_path %s/proxy;
  fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi;
  scgi_temp_path %s/scgi;
  server {
    listen 127.0.0.1:%d;
    location / {
      proxy_pass http://127.0.0.1:%d;
      proxy_buffering on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
]]

local read_file = server.read_file

local alive = server.alive

-- Starts nginx in the foreground (as our child, one process) proxying to
-- upstream_port; returns { pid, port, dir } once it accepts connections.
local function start_nginx(upstream_port)
  local f = io.open(NGINX, "rb")
  assert(f, ("nginx is not installed at %s (package nginx-light is a declared dependency; `make deps`)"):format(NGINX))
  f:close()
  local dir = server.tmpdir()
  local port = raw.free_port()
  server.write_file(dir .. "/nginx.conf",
    CONF:format(dir, dir, dir, dir, dir, dir, dir, port, upstream_port))
  local pid = tonumber(server.sh(("exec %s -p %s -c %s/nginx.conf >%s/stderr.log 2>&1 & echo $!")
    :format(NGINX, dir, dir, dir)))
  local n = { pid = pid, port = port, dir = dir }
  local up = raw.eventually(function()
    if not alive(pid) then return "dead" end
    local c = raw.connect(port)
    if c then c:close(); return "up" end
  end, 5, 0.05)
  if up ~= "up" then
    local why = (read_file(dir .. "/stderr.log") or "") .. (read_file(dir .. "/error.log") or "")
    if alive(pid) then os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
    os.execute("rm -rf " .. dir)
    error(("nginx (%s) is not runnable; it is a declared dependency (nginx-light):\n%s"):format(NGINX, why))
  end
  return n
end

local function stop_nginx(n)
  if not n then return end
  if alive(n.pid) then
    os.execute(("kill -TERM %d 2>/dev/null"):format(n.pid))
    local gone = raw.eventually(function() return not alive(n.pid) end, 3)
    if not gone then
      os.execute(("kill -KILL %d 2>/dev/null"):format(n.pid))
      raw.eventually(function() return not alive(n.pid) end, 2)
    end
  end
  os.execute("rm -rf " .. n.dir)
end

describe("behind nginx with proxy_buffering on", function()
  local srv, nginx

  setup(function()
    -- heartbeats 30 s apart: only immediate flushing can explain anything
    -- arriving within the few seconds these specs wait
    srv = server.start { apps = { ["app.lua"] = APP },
                         args = { "--no-watch", "--heartbeat", "30", "--retry", "2500" } }
    nginx = start_nginx(srv.port)
  end)
  teardown(function()
    stop_nginx(nginx)
    srv:stop()
  end)

  local function open_through_proxy()
    local c = assert(raw.connect(nginx.port))
    assert(c:send("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"))
    return c
  end

  it("passes the stream's headers and its retry hint through at once", function()
    local c = open_through_proxy()
    local got = c:wait_for("retry: 2500\n\n", 2)
    assert.is_true(got, "nothing of the stream came through nginx within 2 s; got: " .. ("%q"):format(c.buf))
    local head = c.buf:sub(1, c.buf:find("\r\n\r\n", 1, true) or #c.buf)
    assert.matches("^HTTP/1%.1 200", head)
    assert.matches("[Cc]ontent%-[Tt]ype: text/event%-stream", head)
    c:close()
  end)

  it("delivers a published event through the proxy long before a heartbeat", function()
    local c = open_through_proxy()
    assert.is_true(c:wait_for("retry: 2500\n\n", 2), "the stream did not open through nginx")
    -- the subscriber is registered once the stream opened upstream
    local n = raw.eventually(function()
      local r = raw.exchange(srv.port, raw.request("POST", "/pub", nil, "ping"))
      return r and r.body ~= "0" and r.body
    end, 2)
    assert.equal("1", n)
    local got = c:wait_for("data: ping\n\n", 2)
    assert.is_true(got, "a published event was held by the proxy; got: " .. ("%q"):format(c.buf))
    assert.truthy(c.buf:find("event: update\n", 1, true))
    -- a second event right behind it, as well
    assert(raw.exchange(srv.port, raw.request("POST", "/pub", nil, "pong")))
    assert.is_true(c:wait_for("data: pong\n\n", 2), "the second event was held by the proxy")
    c:close()
  end)

  it("frees the upstream stream when the client behind the proxy goes away", function()
    local c = open_through_proxy()
    assert.is_true(c:wait_for("retry: 2500\n\n", 2))
    c:close()
    local zero = raw.eventually(function()
      local r = raw.exchange(srv.port, raw.request("POST", "/pub", nil, "after"))
      return r and r.body == "0"
    end, 5, 0.1)
    assert.is_true(zero, "the upstream subscription outlived the client")
  end)
end)

-- Served to a real browser by spec/browser/eventsource.js: ticks with
-- two-line data, and a stream the server cuts every 0.65 s so the browser
-- reconnects (after the 100 ms retry hint) with Last-Event-ID.
local sluice = require "sluice"
local app = sluice.app()
local n = 0
app:every(0.2, function() n = n + 1; sluice.publish("bt", { event = "tick", data = "line " .. n .. "\nsecond line" }) end)
app:stream("/bt", function(req, s) s:subscribe("bt") end)
-- cut every stream after 3 events so the browser reconnects with Last-Event-ID
app:stream("/cut", function(req, s)
  s:subscribe("bt")
  s:retry(100)
  s:after(0.65, function() s:close() end)
end)
app:get("/", function() return 200, [[<!doctype html><body><pre id=log></pre><script>
const log = document.getElementById("log"); const seen = [];
const es = new EventSource("/cut");
es.onopen = () => log.textContent += "open\n";
es.addEventListener("tick", (e) => { seen.push(e.lastEventId); log.textContent += "tick " + e.lastEventId + " " + JSON.stringify(e.data) + "\n"; });
setTimeout(() => {
  const ids = seen.map(Number);
  let gaps = 0; for (let i = 1; i < ids.length; i++) if (ids[i] !== ids[i - 1] + 1) gaps++;
  window.result = { events: seen.length, unique: new Set(seen).size, gaps: gaps,
                    opens: (log.textContent.match(/^open$/mg) || []).length };
  document.title = "done";
}, 3500);
</script>]], { ["Content-Type"] = "text/html" } end)
return app

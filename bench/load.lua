-- wrk script: POST realistic chat-completions bodies, count statuses, print JSON at the end.
-- Arguments (after --): mode (unique|cycle), nonce, cycle size, max responses per thread,
-- body prefix file, body suffix file, extra header "name: value" (optional).
local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local function slurp(path)
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   return data
end

function init(args)
   mode, nonce = args[1], args[2]
   cycle, max_responses = tonumber(args[3]), tonumber(args[4])
   prefix, suffix = slurp(args[5]), slurp(args[6])
   headers = { ["content-type"] = "application/json", ["authorization"] = "Bearer sk-bench" }
   if args[7] and args[7] ~= "" then
      local name, value = args[7]:match("^([^:]+):%s*(.*)$")
      headers[name] = value
   end
   counter = id * 7919  -- threads start at different points of the cycle
   responses, non200, hits, misses = 0, 0, 0, 0
end

function request()
   counter = counter + 1
   local prompt
   if mode == "cycle" then
      prompt = string.format("Summarise the change set number %d in two sentences.", counter % cycle)
   else
      prompt = string.format("Explain request %s-%d-%d of the benchmark in two sentences.", nonce, id, counter)
   end
   return wrk.format("POST", "/v1/chat/completions", headers, prefix .. prompt .. suffix)
end

function response(status, hdrs, body)
   responses = responses + 1
   if status ~= 200 then non200 = non200 + 1 end
   local cache = hdrs["llmreel-cache"]
   if cache == "hit" then hits = hits + 1 elseif cache == "miss" then misses = misses + 1 end
   if max_responses > 0 and responses >= max_responses then wrk.thread:stop() end
end

function done(summary, latency, requests)
   local total = { responses = 0, non200 = 0, hits = 0, misses = 0 }
   for _, t in ipairs(threads) do
      for k, _ in pairs(total) do total[k] = total[k] + (t:get(k) or 0) end
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"mean_us":%.1f,"max_us":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,' ..
      '"err_timeout":%d,"responses":%d,"non200":%d,"hits":%d,"misses":%d}\n',
      summary.requests, summary.duration, summary.bytes, latency:percentile(50),
      latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
      e.connect, e.read, e.write, e.status, e.timeout,
      total.responses, total.non200, total.hits, total.misses))
end

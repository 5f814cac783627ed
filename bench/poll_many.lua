-- wrk script: each request polls the next of the job ids in the JOB_IDS environment variable.
local ids = {}
for id in string.gmatch(os.getenv("JOB_IDS") or "", "[^,]+") do ids[#ids + 1] = id end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/v1/fine_tuning/jobs/" .. ids[(i % #ids) + 1])
end

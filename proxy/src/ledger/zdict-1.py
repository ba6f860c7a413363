"""How zdict-1.bin, the zstd dictionary of the ledger index's rows, was made.

Kept for provenance only. The dictionary must never change: rows name it by id and every
index keeps its own copy in the `dictionaries` table. A better one is a new file and a new
id, never an edit. Made with Python 3.11 and zstd 1.5:

    mkdir samples && cd samples && python3 ../zdict-1.py 3000
    zstd --train s* -o zdict-1.bin --maxdict=16384

The samples are synthetic records of each kind in canonical form (keys sorted, compact),
with random ids, hashes, addresses and prose, starting from two records `sluice demo` wrote.
"""
import json, random, uuid, hashlib, sys
random.seed(7)
base_i = json.loads('{"content_mode":"full","content_sha256":"ff56e6621f972814a2edbbd5bb7dc50e208f2f0b4f5318b865c9f32bb4caa337","cost_usd":6e-6,"decision":"allow","endpoint":"chat.completions","error":null,"hmac_key_id":"5fa74212d1fbe507","id":"01a20918-5e89-73df-a2dc-189b88c27de9","identity":{"api_key_fingerprint":"sha256:064b745bf0e8a020","cgroup":"/sluice-demo-15450","cgroup_id":10456,"client_addr":"127.0.0.1:40108","container_id":null,"exe":"/usr/bin/curl","pid":15467,"pod_uid":null,"process":"curl","project":null,"team":null,"uid":0,"user":null},"kind":"interaction","latency_ms":2.110798,"model":"gpt-4o-mini","outcome":"success","policy_id":null,"policy_mode":null,"prev_hash":"c2ffdb69a0a58d280c08d8c71dfcc3f22e6d014b0827abbf717883818431f9f3","provider":"openai","reason_codes":[],"request":{"body_bytes":156,"method":"POST","parse_error":null,"path":"/v1/chat/completions","truncated":false},"response":{"body_bytes":620,"error":null,"events":0,"finish_reason":"stop","truncated":false},"seq":2,"status":200,"stream":false,"triggered_categories":[],"ts":"2026-11-23T15:48:41.735Z","ttft_ms":null,"upstream":{"addr":"127.0.0.1:34009","sni":"api.openai.com"},"usage":{"cached_tokens":0,"estimated":false,"input_tokens":8,"output_tokens":8,"reasoning_tokens":0}}')
base_a = json.loads('{"action":"reload","details":{"event":"start","listen":["127.0.0.1:33291"],"on_ledger_failure":"FailClosed","policies":[],"redirect":true},"hmac_key_id":"5fa74212d1fbe507","id":"01a20918-5e67-71f9-93d5-9bcabb1add9f","initiator":{"id":"uid:0","ip":null,"role":"cli"},"kind":"admin","outcome":"success","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,"target":{"id":"/tmp/demo1/sluice.yaml","type":"config"},"ts":"2026-11-23T15:48:41.703Z"}')
words = ("the a of to and in is for on with as by at from report data revenue cost outlook quarter summary "
 "write explain code function python rust error test deploy kubernetes pod service customer email table "
 "translate french german invoice contract risk security policy model prompt answer list three bullet points "
 "please briefly describe why how what when which user system assistant json schema sql query database").split()
def prose(n): return " ".join(random.choice(words) for _ in range(n)).capitalize()+"."
def hx(n): return hashlib.sha256(random.randbytes(16)).hexdigest()[:n]
def uid(): return str(uuid.UUID(int=random.getrandbits(128)))
def ts(): return "2026-%02d-%02dT%02d:%02d:%02d.%03dZ"%(random.randint(1,12),random.randint(1,28),random.randint(0,23),random.randint(0,59),random.randint(0,59),random.randint(0,999))
provs=[("openai","chat.completions","/v1/chat/completions","api.openai.com",["gpt-4o","gpt-4o-mini","gpt-4.1","o3-mini","gpt-5"]),
 ("anthropic","messages","/v1/messages","api.anthropic.com",["claude-sonnet-4-5","claude-haiku-4-5","claude-opus-4-1"]),
 ("gemini","generateContent","/v1beta/models/gemini-2.5-pro:generateContent","generativelanguage.googleapis.com",["gemini-2.5-pro","gemini-2.5-flash"]),
 ("mistral","chat.completions","/v1/chat/completions","api.mistral.ai",["mistral-large-latest","mistral-small-latest"]),
 ("azure_openai","chat.completions","/openai/deployments/prod/chat/completions","example.openai.azure.com",["gpt-4o"])]
procs=[("python3","/usr/bin/python3"),("node","/usr/bin/node"),("curl","/usr/bin/curl"),("java","/usr/lib/jvm/bin/java")]
def canon(o): return json.dumps(o,sort_keys=True,separators=(",",":"),ensure_ascii=False)
n=0
def out(s):
    global n; open(f"s{n:05d}",'w').write(s); n+=1
for i in range(int(sys.argv[1])):
    r=random.random()
    if r<0.8:
        m=json.loads(json.dumps(base_i))
        p,ep,path,sni,models=random.choice(provs)
        m.update(provider=p,endpoint=ep,model=random.choice(models),id=uid(),ts=ts(),prev_hash=hx(64),content_sha256=hx(64),hmac_key_id=hx(16),seq=random.randint(1,10**7),
          latency_ms=round(random.uniform(50,9000),random.randint(1,6)),stream=random.random()<0.6,status=random.choice([200]*9+[429,500,403]))
        m["ttft_ms"]=round(random.uniform(20,900),3) if m["stream"] else None
        m["cost_usd"]=round(random.uniform(0,0.05),6)
        d=random.choice(["allow"]*8+["redact","block"])
        m["decision"]=d; m["outcome"]={"allow":"success","redact":"success","block":"blocked"}[d]
        if d!="allow": m["reason_codes"]=random.sample(["pii.email","pii.phone","secret.aws_key","prompt_injection","budget_exceeded","model_not_allowed"],random.randint(1,2)); m["triggered_categories"]=["pii"]; m["policy_id"]="default@%d"%random.randint(1,9); m["policy_mode"]="enforce"
        pr,ex=random.choice(procs)
        m["identity"].update(api_key_fingerprint="sha256:"+hx(16),cgroup=random.choice(["/user.slice/user-1000.slice/session-3.scope","/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice/cri-containerd-%s.scope"%(uid().replace('-','_'),hx(64)),"/system.slice/app.service"]),cgroup_id=random.randint(1000,99999),client_addr="10.%d.%d.%d:%d"%(random.randint(0,255),random.randint(0,255),random.randint(0,255),random.randint(30000,60000)),exe=ex,pid=random.randint(100,400000),process=pr,uid=random.choice([0,1000,1001,65534]))
        if random.random()<0.3: m["identity"].update(pod_uid=uid(),container_id=hx(64),team="team-"+random.choice(["ml","web","data"]),project="proj-"+hx(4))
        m["request"].update(body_bytes=random.randint(100,20000),path=path)
        m["response"].update(body_bytes=random.randint(100,50000),events=random.randint(0,400) if m["stream"] else 0,finish_reason=random.choice(["stop","end_turn","length","tool_calls","STOP"]))
        m["upstream"]=dict(addr="%d.%d.%d.%d:443"%(random.randint(1,223),random.randint(0,255),random.randint(0,255),random.randint(0,255)),sni=sni)
        it,ot=random.randint(5,4000),random.randint(1,2000)
        m["usage"]=dict(cached_tokens=random.choice([0,0,None,128]),estimated=random.random()<0.1,input_tokens=it,output_tokens=ot,reasoning_tokens=random.choice([None,0,64]))
        out(canon(m))
        msgs=([{"content":prose(random.randint(4,20)),"role":"system"}] if random.random()<0.6 else [])+[{"content":prose(random.randint(5,60)),"role":"user"}]
        params={k:v for k,v in [("temperature",random.choice([0,0.2,0.7,1])),("max_tokens",random.choice([256,512,1024,4096]))] if random.random()<0.7}
        out(canon({"request":{"messages":msgs,"params":params},"response":{"output":prose(random.randint(5,120)),"tool_calls":[]}}))
    elif r<0.9:
        m=json.loads(json.dumps(base_a)); m.update(id=uid(),ts=ts(),prev_hash=hx(64),hmac_key_id=hx(16),seq=random.randint(1,10**7),action=random.choice(["reload","export","delete","create","update"]))
        out(canon(m))
    else:
        pr,ex=random.choice(procs)
        m={"bytes_down":random.randint(0,10**6),"bytes_up":random.randint(0,10**5),"duration_ms":round(random.uniform(1,60000),3),"error":None,"hmac_key_id":hx(16),"id":uid(),"identity":{"api_key_fingerprint":None,"cgroup":"/system.slice/app.service","cgroup_id":random.randint(1000,99999),"client_addr":"10.0.%d.%d:%d"%(random.randint(0,255),random.randint(0,255),random.randint(30000,60000)),"container_id":None,"exe":ex,"pid":random.randint(100,400000),"pod_uid":None,"process":pr,"project":None,"team":None,"uid":0,"user":None},"kind":"connection","outcome":random.choice(["passthrough","refused"]),"prev_hash":hx(64),"reason":random.choice(["not inspected: pinned client","no SNI","unknown provider"]),"seq":random.randint(1,10**7),"sni":random.choice(["api.openai.com","api.anthropic.com",None]),"ts":ts(),"upstream":{"addr":"104.18.%d.%d:443"%(random.randint(0,255),random.randint(0,255)),"sni":None}}
        out(canon(m))

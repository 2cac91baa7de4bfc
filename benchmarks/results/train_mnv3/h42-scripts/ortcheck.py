import json, sys, numpy as np, onnxruntime as ort
d = np.load(sys.argv[1])
for p in sys.argv[2:]:
    r = json.load(open(p.replace(".out.onnx", ".report.json")))
    res = {}
    for tag, f in (("before", r["input"] if isinstance(r["input"], str) else p.replace(".out.onnx", ".onnx")), ("after", p)):
        s = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
        lg = np.concatenate([s.run(None, {"input": d["input"][i:i+1]})[0] for i in range(len(d["labels"]))])
        res[tag] = float((lg.argmax(1) == d["labels"]).mean())
    print(p, "ORT mine:", res, "report accuracy:", r["accuracy"], "latency:", r["latency"])

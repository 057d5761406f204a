// detstack demo page: sends the form to this page's own server and draws the answer.
// Every text that comes from the server (category names, error messages) is rendered with
// textContent or canvas fillText, never as HTML. Nothing is stored in the browser.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("predict-form");
  const threshold = $("threshold");
  const thresholdValue = $("threshold-value");
  let maxUploadBytes = Infinity;

  function setState(state) {
    document.body.dataset.state = state;
  }

  function showError(title, message) {
    $("error-title").textContent = title;
    $("error-message").textContent = message;
    $("error").hidden = false;
    $("status").textContent = "";
  }

  function clearResult() {
    $("error").hidden = true;
    $("latency").hidden = true;
    $("detections").hidden = true;
    $("detections").querySelector("tbody").replaceChildren();
    const canvas = $("canvas");
    canvas.hidden = true;
    canvas.dataset.detections = "";
  }

  function formatMs(value) {
    return value < 10 ? value.toFixed(1) : Math.round(value).toString();
  }

  function drawResult(result) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onerror = () => reject(new Error("the returned preview could not be displayed"));
      image.onload = () => {
        // Draw at display size (small images scaled up, large ones down) so that lines and
        // labels keep a readable size whatever the image's resolution.
        const canvas = $("canvas");
        const room = canvas.parentElement.clientWidth || 640;
        const displayWidth = Math.min(room, Math.max(result.width, 640));
        const scale = displayWidth / result.width;
        canvas.width = Math.round(result.width * scale);
        canvas.height = Math.round(result.height * scale);
        const ctx = canvas.getContext("2d");
        ctx.imageSmoothingEnabled = scale < 1;
        ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
        const fontSize = 14;
        ctx.font = `600 ${fontSize}px system-ui, sans-serif`;
        ctx.textBaseline = "top";
        for (const det of result.detections) {
          const [x1, y1, x2, y2] = det.box.map((v) => v * scale);
          ctx.lineWidth = 3;
          ctx.strokeStyle = det.color;
          ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
          const text = `${det.name} ${det.score.toFixed(2)}`;
          const width = ctx.measureText(text).width + 8;
          const labelY = y1 - fontSize - 6 >= 0 ? y1 - fontSize - 6 : y1;
          ctx.fillStyle = det.color;
          ctx.fillRect(x1 - 1.5, labelY, width, fontSize + 6);
          ctx.fillStyle = "#000";
          ctx.fillText(text, x1 + 2.5, labelY + 3);
        }
        canvas.dataset.detections = String(result.detections.length);
        canvas.hidden = false;
        resolve();
      };
      image.src = result.image;
    });
  }

  function fillTable(result) {
    const body = $("detections").querySelector("tbody");
    for (const det of result.detections) {
      const row = document.createElement("tr");
      const name = document.createElement("td");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.backgroundColor = det.color;
      name.append(swatch, document.createTextNode(`${det.name} (id ${det.label})`));
      const score = document.createElement("td");
      score.textContent = det.score.toFixed(3);
      const box = document.createElement("td");
      box.textContent = det.box.map((v) => v.toFixed(1)).join(", ");
      row.append(name, score, box);
      body.append(row);
    }
    $("detections").hidden = result.detections.length === 0;
  }

  async function submit(event) {
    event.preventDefault();
    clearResult();
    const file = $("image").files[0];
    if (!file) {
      showError("No image", "Choose an image file to upload.");
      setState("error");
      return;
    }
    if (file.size > maxUploadBytes) {
      const mb = (maxUploadBytes / 1048576).toFixed(1);
      showError("Image too large", `The image is ${(file.size / 1048576).toFixed(1)} MB; this page accepts up to ${mb} MB.`);
      setState("error");
      return;
    }
    const data = new FormData();
    data.append("endpoint", $("endpoint").value);
    data.append("model", $("model").value);
    data.append("token", $("token").value);
    data.append("threshold", threshold.value);
    data.append("image", file, file.name);
    $("submit").disabled = true;
    $("status").textContent = "Detecting…";
    setState("busy");
    try {
      const response = await fetch("/api/predict", {
        method: "POST", body: data, cache: "no-store", credentials: "omit",
      });
      let payload;
      try {
        payload = await response.json();
      } catch (_) {
        payload = { ok: false, error: { kind: "bad_response", title: `HTTP ${response.status}`,
                                        message: "The demo server sent an unexpected answer." } };
      }
      if (!response.ok || !payload.ok) {
        const error = payload.error || {};
        showError(error.title || `HTTP ${response.status}`, error.message || "Request failed.");
        document.body.dataset.errorKind = error.kind || "unknown";
        setState("error");
        return;
      }
      await drawResult(payload);
      fillTable(payload);
      const count = payload.detections.length;
      const hidden = payload.hidden_below_threshold;
      $("status").textContent =
        `${count} object${count === 1 ? "" : "s"} detected by ${payload.model} version ${payload.model_version}` +
        (hidden ? ` (${hidden} more below the threshold)` : "") + ".";
      $("latency").textContent =
        `Latency: ${formatMs(payload.latency_ms.triton)} ms Triton round trip (${payload.protocol}); ` +
        `${formatMs(payload.latency_ms.total)} ms for the whole request on the demo server ` +
        "(decoding, connecting, reading category names).";
      $("latency").hidden = false;
      document.body.dataset.errorKind = "";
      setState("done");
    } catch (error) {
      showError("Demo server unreachable", `The page could not reach its server: ${error.message}`);
      document.body.dataset.errorKind = "page_server";
      setState("error");
    } finally {
      $("submit").disabled = false;
    }
  }

  async function loadConfig() {
    try {
      const response = await fetch("/api/config", { cache: "no-store", credentials: "omit" });
      const config = await response.json();
      if (!$("endpoint").value) $("endpoint").value = config.default_endpoint;
      if (!$("model").value) $("model").value = config.default_model;
      maxUploadBytes = config.max_upload_bytes;
      $("upload-limit").textContent =
        `Up to ${(maxUploadBytes / 1048576).toFixed(1)} MB. Allowed endpoints: ${config.allowed_endpoints.join(", ")}`;
    } catch (_) {
      $("upload-limit").textContent = "";
    }
    setState("ready");
  }

  threshold.addEventListener("input", () => {
    thresholdValue.textContent = Number(threshold.value).toFixed(2);
  });
  form.addEventListener("submit", submit);
  loadConfig();
})();

// Runs on the audio rendering thread: collects the microphone's samples into
// blocks of about 50 ms (mono, float32, at the AudioContext's sample rate) and
// posts each block to the page, which sends it to WS /v1/stream as pcm_f32le.

const BLOCK_S = 0.05; // like swishnet mic: few messages, a responsive display

class PcmCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.blockSize = Math.round(sampleRate * BLOCK_S);
    this.block = new Float32Array(this.blockSize);
    this.filled = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    const frames = channels.length ? channels[0].length : 0;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.block[this.filled++] = sum / channels.length; // the service wants mono: average the channels
      if (this.filled === this.blockSize) {
        this.port.postMessage(this.block.buffer, [this.block.buffer]); // transferred: this.block is now empty
        this.block = new Float32Array(this.blockSize);
        this.filled = 0;
      }
    }
    return true; // keep running while the microphone is connected
  }
}

registerProcessor("pcm-capture", PcmCapture);

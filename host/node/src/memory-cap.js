// The memory cap: a core module's own memories get a maximum, so a `memory.grow` past it
// fails inside the component (which then traps) instead of taking the process's memory.
// WebAssembly's limits are part of the module, so the cap is written into its bytes before
// it is compiled: the memory section is rewritten, everything else is kept as it was.

const PAGE = 65_536;
const MEMORY_SECTION = 5;

function readU32(bytes, at) {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[at++];
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if ((byte & 0x80) === 0) return [value, at];
  }
}

function u32(value) {
  const out = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    out.push(byte);
  } while (value > 0);
  return out;
}

/** `bytes` (a core module) with each memory it defines capped at `limitBytes`. */
export function capMemory(bytes, limitBytes) {
  const cap = Math.floor(limitBytes / PAGE);
  const parts = [bytes.subarray(0, 8)]; // magic and version
  let at = 8;
  while (at < bytes.length) {
    const id = bytes[at];
    const [size, start] = readU32(bytes, at + 1);
    const end = start + size;
    if (id !== MEMORY_SECTION) {
      parts.push(bytes.subarray(at, end));
    } else {
      let [count, p] = readU32(bytes, start);
      const body = u32(count);
      for (; count > 0; count -= 1) {
        const flags = bytes[p];
        if (flags !== 0 && flags !== 1) throw new Error(`a memory with limits flags ${flags} cannot be capped`);
        let min;
        let max = Infinity;
        [min, p] = readU32(bytes, p + 1);
        if (flags === 1) [max, p] = readU32(bytes, p);
        if (min > cap) {
          throw new RangeError(`memoryLimitMib is below the component's initial memory (${(min * PAGE) / 2 ** 20} MiB)`);
        }
        body.push(1, ...u32(min), ...u32(Math.min(max, cap)));
      }
      parts.push(Uint8Array.from([MEMORY_SECTION, ...u32(body.length), ...body]));
    }
    at = end;
  }
  return Buffer.concat(parts);
}

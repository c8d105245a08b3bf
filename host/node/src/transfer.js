// Values cross between the vault's thread and its workers by structured clone, which copies
// a typed array's whole buffer: a view into a Wasm memory (as jco lifts bytes) or into
// Node's shared Buffer pool would carry megabytes. `compact` copies such views first.

/** `value` with every byte view that does not span its whole buffer copied. */
export function compact(value) {
  if (value instanceof Uint8Array) {
    return value.byteLength === value.buffer.byteLength ? value : value.slice();
  }
  if (Array.isArray(value)) return value.map(compact);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, compact(v)]));
  }
  return value;
}

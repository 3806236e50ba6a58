// Runs the wasm32 replay under Node.js's WASI with the corpus directories preopened.
// node run.mjs MODULE TARGET DIR...
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { resolve } from 'node:path';

const [module, target, ...dirs] = process.argv.slice(2);
const preopens = Object.fromEntries(dirs.map((d) => [resolve(d), resolve(d)]));
const wasi = new WASI({ version: 'preview1', args: ['replay', target, ...dirs.map((d) => resolve(d))], preopens, returnOnExit: true });
const wasm = await WebAssembly.compile(await readFile(module));
// The library links its proxy-wasm host layer too; the core must never reach it here.
const env = new Proxy({}, { get: (_, name) => () => { throw new Error(`host call ${String(name)} from the core`); } });
const instance = await WebAssembly.instantiate(wasm, { ...wasi.getImportObject(), env });
// proxy_wasm::main! exports `_initialize` (a reactor's entry) beside the command's `_start`:
// hand WASI the exports without it.
const exports = Object.fromEntries(Object.entries(instance.exports).filter(([k]) => k !== '_initialize'));
process.exitCode = wasi.start({ exports });

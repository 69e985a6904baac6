#!/usr/bin/env node
// Entry point of the `dst` command: runs the TypeScript sources through ts-node (transpile only; `npm test` type-checks).
'use strict'
require('ts-node').register({ transpileOnly: true, project: require('node:path').join(__dirname, '..', 'tsconfig.json') })
require('./cli.ts').main(process.argv.slice(2))
